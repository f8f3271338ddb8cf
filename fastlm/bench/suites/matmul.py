"""int8 matmuls: W8A8 and W8A16 against fp32 torch.matmul and PyTorch's own dynamic int8 linear.

CPU (LLM shapes K = N = 1024 and 4096, M = 1, 16, 256), each timed with the same inputs in the same run:
  fp32       torch.addmm(bias, x, w.T) in fp32 (what nn.Linear runs)
  torch_int8 torch.ao.quantization.quantize_dynamic(nn.Linear) (fbgemm, per-channel int8 weights,
             dynamically quantized activations, fp32 in and out: the same work as fastlm's W8A8)
  w8a8       fastlm.ops.quantize_per_token(x) + int8_matmul(..., bias), fp32 in and out
  w8a16      fastlm.ops.int8_weight_matmul(x, ...) with bf16 activations (fp32 accumulation); column
             w8a16_kernel: the kernel that ran (avx512_bf16: vdpbf16ps; avx512_fp32 / avx2_fp32: fp32 streaming;
             dense_fp32: dequantized fp32 GEMM)
  w8a16_fp32 the same with FASTLM_INT8_W8A16_MATH=fp32 (the fp32 kernels), where w8a16 ran avx512_bf16
  w8a16 avx512_vnni_packed: the weight passed as a PackedInt8Weight (the packed GEMV, M <= 4)
Rows carry `speedup` (fp32 time / fastlm time) and `vs_torch_int8` (torch int8 time / fastlm time).
fastlm picks its CPU kernels at run time (AMX tiles where the CPU has them, else AVX-512 VNNI / AVX2);
the suite forces each vector path this CPU runs in turn (FASTLM_INT8_KERNEL, column `kernel`; set the
variable yourself to measure one path only); `avx512_vnni_packed` / `avx_vnni_packed` are W8A8 with the
weight packed once (ops.pack_int8_weight, what Int8Linear runs on the CPU). The candidates of one shape run in interleaved rounds
(each round calls every one once), so they share the machine's load; times are the best round; every timed
call starts with the caches cleared of the weights (see _interleaved).
CUDA: fp16 cuBLAS, torch._int_mm, fastlm's int8 GEMM (Triton) and the W8A16 GEMV at M = 1, in TFLOP/s.
"""
from __future__ import annotations

import os
import time
import warnings

import torch

import fastlm.ops as ops
from fastlm.ops.int8_matmul import PACKED_PATHS, PACKED_W8A16_MAX_ROWS
from fastlm.bench.registry import Options, Suite
from fastlm.bench.timing import Measurement, compare, time_callable

CPU_SIZES = [1024, 4096]
CPU_ROWS = [1, 16, 256]
CUDA_ROWS = [1, 16, 256, 4096]


def _torch_int8_linear(weight: torch.Tensor, bias: torch.Tensor):
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        torch.backends.quantized.engine = "fbgemm" if "fbgemm" in torch.backends.quantized.supported_engines \
            else torch.backends.quantized.engine
        return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear},
                                                      dtype=torch.qint8)


def _time(name, fn, repeat, device=None) -> Measurement:
    with torch.no_grad():
        return time_callable(name, fn, repeat=repeat, warmup=3, device=device)


def _cpu_paths() -> list[str]:
    """The int8 vector paths to force: FASTLM_INT8_KERNEL when set, else every one this CPU runs but scalar."""
    forced = os.environ.get("FASTLM_INT8_KERNEL", "")
    if forced and forced != "auto":
        return [forced]
    return [p for p in torch.ops.fastlm.int8_cpu_kernels() if p != "scalar"]


def _with_path(path: str, fn):
    """fn run with FASTLM_INT8_KERNEL=path (read by the C++ ops on every call)."""
    def run():
        os.environ["FASTLM_INT8_KERNEL"] = path
        return fn()
    return run


def _fp32_math(fn):
    """fn run with FASTLM_INT8_W8A16_MATH=fp32 (W8A16 on the fp32 kernels, as on CPUs without AVX512-BF16)."""
    def run():
        os.environ["FASTLM_INT8_W8A16_MATH"] = "fp32"
        try:
            return fn()
        finally:
            os.environ.pop("FASTLM_INT8_W8A16_MATH", None)
    return run


def _w8a16_kernel(path: str, m: int, k: int, fp32: bool = False) -> str:
    """The W8A16 kernel int8_weight_matmul runs for m rows of bf16 x on `path` (avx512_bf16, avx512_fp32, ...)."""
    saved = os.environ.get("FASTLM_INT8_KERNEL")
    os.environ["FASTLM_INT8_KERNEL"] = path
    try:
        name = lambda: torch.ops.fastlm.int8_weight_kernel(m, torch.bfloat16, k, k)  # noqa: E731
        return _fp32_math(name)() if fp32 else name()
    finally:
        if saved is None:
            os.environ.pop("FASTLM_INT8_KERNEL", None)
        else:
            os.environ["FASTLM_INT8_KERNEL"] = saved


EVICT_BYTES = 128 << 20  # more than the last-level caches of the CPUs measured


def _evict(buffer: torch.Tensor) -> None:
    """Reads `buffer` so that the previous candidate's weights are no longer cached."""
    buffer.sum()


def _interleaved(fns: dict, repeat: int, warmup: int = 2, evict: bool = True) -> dict[str, Measurement]:
    """Best wall time of each fn over `repeat` rounds, each round calling every fn once in turn.

    With `evict`, each timed call starts with its weights out of the caches (a 128 MiB read, not timed): a
    16 MiB weight matrix otherwise stays in a 32 MiB L3 from one candidate to the next, and whichever candidate
    reads the same array as the one before it looks faster (decoding a whole model reads its weights from DRAM).
    """
    runs: dict[str, list[float]] = {name: [] for name in fns}
    buffer = torch.ones(EVICT_BYTES // 4) if evict else None
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(repeat):
            for name, fn in fns.items():
                if buffer is not None:
                    _evict(buffer)
                start = time.perf_counter()
                fn()
                runs[name].append(time.perf_counter() - start)
    return {name: Measurement(name, min(r), r) for name, r in runs.items()}


def _cpu_rows(options: Options) -> list[dict]:
    sizes = CPU_SIZES[:1] if options.quick else CPU_SIZES
    repeat = options.repeats(30)
    paths = _cpu_paths()
    saved = os.environ.get("FASTLM_INT8_KERNEL")
    rows = []
    try:
        for size in sizes:
            k = n = size
            weight, bias = torch.randn(n, k) / k**0.5, torch.randn(n)
            w_int8, w_scale = ops.quantize_per_channel(weight)
            packed = ops.pack_int8_weight(w_int8)
            torch_int8 = _torch_int8_linear(weight, bias)
            for m in CPU_ROWS:
                x = torch.randn(m, k)
                x16 = x.to(torch.bfloat16)

                def w8a8(x=x, b=w_int8.t()):
                    x_int8, x_scale = ops.quantize_per_token(x)
                    return ops.int8_matmul(x_int8, b, x_scale, w_scale, bias)

                def w8a8_packed(x=x):  # what Int8Linear runs on the CPU
                    return w8a8(x, packed)

                fns = {"fp32": lambda x=x: torch.addmm(bias, x, weight.t()), "torch_int8": lambda x=x: torch_int8(x)}
                for path in paths if packed.packed is not None else []:
                    if path in PACKED_PATHS:
                        fns[f"w8a8 {path}_packed"] = _with_path(path, w8a8_packed)
                    if path == "avx512_vnni" and m <= PACKED_W8A16_MAX_ROWS:  # the packed W8A16 GEMV
                        fns[f"w8a16 {path}_packed"] = _with_path(path, lambda x16=x16: ops.int8_weight_matmul(
                            x16, packed, w_scale, bias))
                for path in paths:
                    fns[f"w8a8 {path}"] = _with_path(path, w8a8)
                    def w8a16(x16=x16):
                        return ops.int8_weight_matmul(x16, w_int8, w_scale, bias)

                    fns[f"w8a16 {path}"] = _with_path(path, w8a16)
                    if _w8a16_kernel(path, m, k).endswith("_bf16"):  # the fp32 kernels too, same run
                        fns[f"w8a16_fp32 {path}"] = _with_path(path, _fp32_math(w8a16))
                times = _interleaved(fns, repeat if m < 256 else max(2, repeat // 3))
                fp32, theirs = times["fp32"], times["torch_int8"]
                for name in times:
                    if name in ("fp32", "torch_int8"):
                        continue
                    scheme, path = name.split()
                    ours = times[name]
                    row = {"case": f"{scheme} K=N={size} M={m}", "scheme": scheme, "kernel": path,
                           "K=N": size, "M": m, "fastlm_ms": ours.seconds * 1e3,
                           "fp32_ms": fp32.seconds * 1e3, "torch_int8_ms": theirs.seconds * 1e3,
                           "speedup": compare(ours, fp32), "vs_torch_int8": compare(ours, theirs)}
                    if path.endswith("_packed") and scheme == "w8a16":
                        row["w8a16_kernel"] = "avx512_packed_fp32"
                    elif scheme.startswith("w8a16"):
                        row["w8a16_kernel"] = _w8a16_kernel(path, m, k, fp32=scheme == "w8a16_fp32")
                    rows.append(row)
    finally:
        if saved is None:
            os.environ.pop("FASTLM_INT8_KERNEL", None)
        else:
            os.environ["FASTLM_INT8_KERNEL"] = saved
    return rows


def _tflops(m: int, n: int, k: int, measurement: Measurement) -> float:
    return 2 * m * n * k / measurement.seconds / 1e12


def _cuda_rows(options: Options) -> list[dict]:
    size = 4096
    k = n = size
    repeat = options.repeats(30)
    dev = "cuda"
    weight = torch.randn(n, k, device=dev) / k**0.5
    w16 = weight.half()
    w_int8, w_scale = ops.quantize_per_channel(weight)
    rows = []
    for m in CUDA_ROWS[:2] if options.quick else CUDA_ROWS:
        x16 = torch.randn(m, k, device=dev, dtype=torch.float16)
        x_int8, x_scale = ops.quantize_per_token(x16)
        fp16 = _time("fp16", lambda: torch.matmul(x16, w16.t()), repeat, dev)
        ours_raw = _time("int8", lambda: ops.int8_matmul(x_int8, w_int8.t(), None, None, out_dtype=torch.int32),
                         repeat, dev)
        ours = _time("w8a8", lambda: ops.int8_matmul(x_int8, w_int8.t(), x_scale, w_scale, out_dtype=torch.float16),
                     repeat, dev)
        w8a16 = _time("w8a16", lambda: ops.int8_weight_matmul(x16, w_int8, w_scale), repeat, dev)
        row = {"case": f"cuda K=N={size} M={m}", "M": m, "fp16_cublas_tflops": _tflops(m, n, k, fp16),
               "int8_raw_tops": _tflops(m, n, k, ours_raw), "w8a8_tops": _tflops(m, n, k, ours),
               "w8a16_tflops": _tflops(m, n, k, w8a16), "speedup": compare(ours, fp16),
               "w8a16_vs_fp16": compare(w8a16, fp16)}
        if m > 16:  # torch._int_mm needs M > 16
            int_mm = _time("_int_mm", lambda: torch._int_mm(x_int8, w_int8.t()), repeat, dev)
            row["torch_int_mm_tops"] = _tflops(m, n, k, int_mm)
            row["raw_vs_int_mm"] = compare(ours_raw, int_mm)
        rows.append(row)
    return rows


def measure(options: Options) -> list[dict]:
    return _cuda_rows(options) if options.device == "cuda" else _cpu_rows(options)


SUITE = Suite(name="matmul", run=measure,
              baseline="fp32 torch.matmul (speedup); torch quantize_dynamic int8 Linear (vs_torch_int8); "
                       "fp16 cuBLAS and torch._int_mm on CUDA")
