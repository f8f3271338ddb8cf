// The Python module fastlm._C. It has no Python functions: importing it runs the static
// registrations (TORCH_LIBRARY_IMPL kernels for the schemas that fastlm/ops/schemas.py defines, and
// a few native-only ops), and the ops are then called as torch.ops.fastlm.*.
#include <Python.h>

static struct PyModuleDef fastlm_module = {PyModuleDef_HEAD_INIT, "_C", "fastlm native ops (torch.ops.fastlm)", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&fastlm_module); }
