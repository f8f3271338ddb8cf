"""Builds fastlm._C with CMake + ninja against the installed torch.

Environment:
  FASTLM_BUILD_NATIVE=0   skip the compiled extension (fastlm then runs on its plain-torch paths)
  FASTLM_BUILD_CUDA=0|1   force the CUDA kernels off or on (default: on when torch is a CUDA
                          build, i.e. torch.version.cuda is set, and nvcc is found; a GPU is not needed)
  TORCH_CUDA_ARCH_LIST    GPU architectures to compile for (e.g. "9.0"), as with torch extensions
  MAX_JOBS                parallel compile jobs
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


def _want_cuda(torch) -> bool:
    forced = os.environ.get("FASTLM_BUILD_CUDA")
    if forced is not None:
        return forced.strip().lower() in ("1", "true", "yes", "on")
    # torch.version.cuda, not torch.cuda.is_available(): a GPU-less build host still builds the kernels.
    return torch.version.cuda is not None and _find_nvcc() is not None


def _find_nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


class CMakeBuild(build_ext):
    def run(self):
        if os.environ.get("FASTLM_BUILD_NATIVE", "1") == "0":
            print("fastlm: FASTLM_BUILD_NATIVE=0, skipping the compiled extension")
            return
        super().run()

    def build_extension(self, ext: CMakeExtension):
        import torch

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        cuda = _want_cuda(torch)
        args = [
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DFASTLM_OUTPUT_DIR={out_dir}",
            f"-DFASTLM_EXT_SUFFIX={Path(self.get_ext_fullpath(ext.name)).name.split('_C', 1)[1]}",
            f"-DFASTLM_WITH_CUDA={'ON' if cuda else 'OFF'}",
            "-DCMAKE_BUILD_TYPE=Release",
            "-GNinja",
        ]
        if cuda:
            nvcc = _find_nvcc()
            if nvcc:
                args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
            archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
            if archs:
                # "8.0;9.0+PTX" -> "80;90"; CMake's own list format.
                cmake_archs = ";".join(a.replace(".", "").replace("+PTX", "") for a in archs.replace(" ", ";").split(";") if a)
                args.append(f"-DCMAKE_CUDA_ARCHITECTURES={cmake_archs}")
        print(f"fastlm: building fastlm._C (CUDA kernels: {'on' if cuda else 'off'})")
        subprocess.check_call(["cmake", str(ROOT), *args], cwd=build_dir)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(["cmake", "--build", ".", "--parallel", jobs], cwd=build_dir)


setup(
    packages=find_packages(include=["fastlm", "fastlm.*"]) + ["fastlm.kernels"],
    ext_modules=[CMakeExtension("fastlm._C")],
    cmdclass={"build_ext": CMakeBuild},
)
