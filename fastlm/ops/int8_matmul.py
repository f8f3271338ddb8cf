"""int8 matrix products: W8A8 (int8 x int8, int32 accumulation, fused dequantization) and W8A16.

    out = fastlm.ops.int8_matmul(a_int8, w_int8.t(), a_scale, w_scale, bias, out_dtype=torch.bfloat16)
    acc = fastlm.ops.int8_matmul(a_int8, b_int8, None, None, out_dtype=torch.int32)   # raw int32 sums
    y = fastlm.ops.int8_weight_matmul(x, w_int8, w_scale, bias, group_size=None)      # y in x.dtype

int8_matmul: out = (a @ b in int32) * a_scale[:, None] * b_scale[None, :] + bias, in out_dtype; exact
integer sums for any int8 values (-128 included). b (K, N) may be a transposed view of an nn.Linear-
layout (N, K) int8 weight (the fast CPU path). int8_weight_matmul: x @ (w_int8 * w_scale).T + bias,
weights dequantized on the fly, fp32 accumulation; per channel (w_scale (N,)) or per group of
group_size columns (w_scale (N, K // group_size)). On CPUs with AVX512-BF16, above a few rows, the products
run as vdpbf16ps: bf16 x exactly, fp16 x exactly and fp32 x to 16 significant bits (each as two bf16
planes), int8 weights exact, fp32 sums, the scales applied to the sums (FASTLM_INT8_W8A16_MATH=fp32 keeps
the fp32 kernels; see csrc/cpu/int8_weight_bf16_kernels.cpp). CPU: C++ (csrc/cpu/int8*.cpp: AMX (int8 tiles; bf16
tiles for W8A16 with bf16 x) / AVX-512 VNNI / AVX-VNNI / AVX2 / scalar, chosen by CPU features and M;
FASTLM_INT8_KERNEL=amx|avx512_vnni|avx_vnni|avx2|scalar forces one, torch.ops.fastlm.int8_cpu_kernels()
lists what this CPU runs); CUDA: Triton (kernels/int8_matmul.py), and
for int8_weight_matmul with at most 8 rows the CUDA GEMV (csrc/cuda/int8_gemv.cu) when built.
Definitions in fastlm/ops/reference_int8.py.

    packed = fastlm.ops.pack_int8_weight(w_int8)                       # once per (N, K) int8 weight
    out = fastlm.ops.int8_matmul(a_int8, packed, a_scale, w_scale, bias)  # b = w_int8.t(), packed

A PackedInt8Weight stands for b = w_int8.t() anywhere int8_matmul takes b. On CPUs whose int8 path is
AVX-512 VNNI or AVX-VNNI it also holds the weight in the kernels' blocked layout (packed once, so no per-call
packing; see csrc/cpu/int8_packed_kernels.cpp); elsewhere int8_matmul uses w_int8.t() as usual.
"""
from __future__ import annotations

import math
import os

import torch

from fastlm.ops import reference_int8 as reference
from fastlm.ops._backend import forced_backend
from fastlm.ops._library import has_native_op, register_op
from fastlm.ops.quantize import check_group_size

OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.int32)
X_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_K = 131071  # 128 * 128 * K must stay below 2^31 (exact int32 accumulation)
CUDA_GEMV_MAX_ROWS = 8

# ---------------------------------------------------------------- registration (see _library.py)


def _triton_matmul():
    from fastlm.kernels import int8_matmul as triton_int8

    return triton_int8.int8_matmul


def _cuda_weight_matmul():
    """Decode-sized inputs go to the CUDA GEMV (when the extension was built with CUDA), others to Triton."""
    from fastlm.kernels import int8_matmul as triton_int8

    gemv = has_native_op("int8_gemv")

    def launch(x, w, w_scale, bias, group_size):
        if gemv and x.shape[0] <= CUDA_GEMV_MAX_ROWS:
            return torch.ops.fastlm.int8_gemv(x, w, w_scale, bias, group_size)
        return triton_int8.int8_weight_matmul(x, w, w_scale, bias, group_size)

    return launch


register_op("int8_matmul", reference=reference.int8_matmul, triton=_triton_matmul,
            fake=lambda a, b, a_scale, b_scale, bias, out_dtype: a.new_empty((a.shape[0], b.shape[1]), dtype=out_dtype))
register_op("int8_weight_matmul", reference=reference.int8_weight_matmul, triton=_cuda_weight_matmul,
            fake=lambda x, w, w_scale, bias, group_size: x.new_empty((x.shape[0], w.shape[0])))


def _setup(ctx, inputs, output):
    x, w, w_scale, bias, group_size = inputs
    ctx.save_for_backward(w, w_scale)
    ctx.x_dtype = x.dtype
    ctx.has_bias = bias is not None


def _backward(ctx, grad_y):
    # Only x and bias train (the weight is frozen int8): grad_x = grad_y @ dequantized w.
    w, w_scale = ctx.saved_tensors
    grad_x = (grad_y.to(torch.float32) @ reference.dequantize_weight(w, w_scale)).to(ctx.x_dtype)
    grad_bias = grad_y.to(torch.float32).sum(0) if ctx.has_bias else None
    return grad_x, None, None, grad_bias, None


torch.library.register_autograd("fastlm::int8_weight_matmul", _backward, setup_context=_setup)

# ---------------------------------------------------------------- input checks


def _tensor(op: str, name: str, t, dtypes=None, kind: str | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must be {kind}, got {t.dtype}")


def _same_device(op: str, ref: torch.Tensor, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{op}: {name} is on {t.device} but the first input is on {ref.device}")


def _float_vector(op: str, name: str, t, n: int) -> torch.Tensor:
    """A float tensor with n elements laid out as a vector ((n,) or a shape like (n, 1)) -> fp32 (n,)."""
    _tensor(op, name, t)
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be floating point, got {t.dtype}")
    # Only the conversions needed: decoding calls this per token, where each call costs.
    if t.dim() != 1:
        t = t.reshape(n)
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t if t.is_contiguous() else t.contiguous()


# ---------------------------------------------------------------- the packed weight

PACKED_PATHS = ("avx512_vnni", "avx_vnni")  # the FASTLM_INT8_KERNEL values the packed kernels stand for
PACKED_W8A16_MAX_ROWS = 4  # int8_weight_matmul with a PackedInt8Weight: the packed GEMV up to this many rows


class PackedInt8Weight:
    """An int8 weight w_int8 (N, K) for int8_matmul as b = w_int8.t(), packed once where the CPU kernel can use it."""

    def __init__(self, w_int8: torch.Tensor):
        _tensor("pack_int8_weight", "w_int8", w_int8, (torch.int8,), "int8")
        if w_int8.dim() != 2:
            raise ValueError(f"pack_int8_weight: w_int8 must be (N, K), got shape {tuple(w_int8.shape)}")
        self.weight = w_int8
        kernels = torch.ops.fastlm.int8_cpu_kernels() if has_native_op("int8_pack_weight") else []
        self._paths = [p for p in PACKED_PATHS if p in kernels]
        # The auto choice where a VNNI path is this CPU's best (AMX CPUs keep their AMX tiles).
        self._auto = bool(self._paths) and "amx" not in kernels
        self.packed = torch.ops.fastlm.int8_pack_weight(w_int8) if w_int8.device.type == "cpu" and self._paths else None

    def usable(self) -> bool:
        if self.packed is None or forced_backend() == "reference":
            return False
        forced = os.environ.get("FASTLM_INT8_KERNEL", "")
        return forced in self._paths or (forced in ("", "auto") and self._auto)

    def usable_for_w8a16(self, rows: int) -> bool:
        """int8_weight_matmul of `rows` rows runs the packed AVX-512 GEMV (per-channel scales, at most 4 rows)."""
        if rows > PACKED_W8A16_MAX_ROWS or "avx512_vnni" not in self._paths or not self.usable():
            return False
        return os.environ.get("FASTLM_INT8_KERNEL", "") in ("", "auto", "avx512_vnni")


def pack_int8_weight(w_int8: torch.Tensor) -> PackedInt8Weight:
    """w_int8 (N, K) int8 (an nn.Linear-layout weight) -> a PackedInt8Weight to pass to int8_matmul as b."""
    return PackedInt8Weight(w_int8)


# ---------------------------------------------------------------- the public functions


def int8_matmul(a_int8: torch.Tensor, b_int8: torch.Tensor, a_scale: torch.Tensor | None,
                b_scale: torch.Tensor | None, bias: torch.Tensor | None = None,
                out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(a (..., K) int8 @ b (K, N) int8) in int32, times a_scale (one per row of a) and b_scale (N,), plus bias (N,).

    b may be a PackedInt8Weight (pack_int8_weight(w_int8), standing for w_int8.t()).

    a_scale may be shaped a.shape[:-1] or a.shape[:-1] + (1,) (as quantize_per_token returns it).
    out_dtype fp32 / bf16 / fp16, or int32 with a_scale = b_scale = bias = None for the raw sums.
    """
    op = "int8_matmul"
    packed = b_int8 if isinstance(b_int8, PackedInt8Weight) else None
    if packed is not None:
        b_int8 = packed.weight.t()
    _tensor(op, "a_int8", a_int8, (torch.int8,), "int8")
    _tensor(op, "b_int8", b_int8, (torch.int8,), "int8")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be one of float32, bfloat16, float16, int32, got {out_dtype}")
    if a_int8.dim() < 1 or b_int8.dim() != 2:
        raise ValueError(f"{op}: a_int8 must be (..., K) and b_int8 (K, N), got shapes {tuple(a_int8.shape)} "
                         f"and {tuple(b_int8.shape)}")
    k, n = b_int8.shape
    if a_int8.shape[-1] != k:
        raise ValueError(f"{op}: K mismatch: a_int8 has K={a_int8.shape[-1]} (shape {tuple(a_int8.shape)}) but "
                         f"b_int8 has K={k} (shape {tuple(b_int8.shape)})")
    if k > MAX_K:
        raise ValueError(f"{op}: K={k} is too large for exact int32 accumulation (at most {MAX_K})")
    _same_device(op, a_int8, b_int8=b_int8, a_scale=a_scale, b_scale=b_scale, bias=bias)
    lead = a_int8.shape[:-1]
    m = math.prod(lead)
    if out_dtype == torch.int32:
        if a_scale is not None or b_scale is not None or bias is not None:
            raise ValueError(f"{op}: out_dtype=int32 returns the raw int32 sums; pass a_scale=b_scale=bias=None")
    else:
        if a_scale is None or b_scale is None:
            raise ValueError(f"{op}: a_scale and b_scale are required unless out_dtype=torch.int32")
        if a_scale.shape not in (lead, lead + (1,)):
            raise ValueError(f"{op}: a_scale must have shape {tuple(lead)} or {tuple(lead) + (1,)} (one scale per "
                             f"row of a_int8), got {tuple(a_scale.shape)}")
        if b_scale.shape not in ((n,), (1, n)):
            raise ValueError(f"{op}: b_scale must have shape ({n},) (one scale per column of b_int8), "
                             f"got {tuple(b_scale.shape)}")
        a_scale = _float_vector(op, "a_scale", a_scale, m)
        b_scale = _float_vector(op, "b_scale", b_scale, n)
        if bias is not None:
            if bias.shape != (n,):
                raise ValueError(f"{op}: bias must have shape ({n},), got {tuple(bias.shape)}")
            bias = _float_vector(op, "bias", bias, n)
    a2d = a_int8 if a_int8.dim() == 2 else a_int8.reshape(m, k)
    # No autograd (integer inputs); scales that require grad (e.g. learned) are used as constants.
    if any(t is not None and t.requires_grad for t in (a_scale, b_scale, bias)):
        a_scale, b_scale = (None if t is None else t.detach() for t in (a_scale, b_scale))
        bias = None if bias is None else bias.detach()
    if forced_backend() == "reference":
        out = reference.int8_matmul(a2d, b_int8, a_scale, b_scale, bias, out_dtype)
    elif packed is not None and a2d.device.type == "cpu" and packed.usable():
        out = torch.ops.fastlm.int8_packed_matmul(a2d, packed.packed, n, a_scale, b_scale, bias, out_dtype)
    else:
        out = torch.ops.fastlm.int8_matmul(a2d, b_int8, a_scale, b_scale, bias, out_dtype)
    return out if a_int8.dim() == 2 else out.reshape(*lead, n)


def int8_weight_matmul(x: torch.Tensor, w_int8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None,
                       group_size: int | None = None) -> torch.Tensor:
    """x (..., K) fp32/bf16/fp16 @ (w_int8 (N, K) * w_scale).T + bias (N,) -> (..., N) in x.dtype (fp32 sums).

    w_scale (N,) per output channel, or (N, K // group_size) with group_size.
    Differentiable in x and bias (the int8 weight is frozen). w_int8 may be a PackedInt8Weight (pack_int8_weight):
    per channel, 1-4 rows, on AVX-512 CPUs it then runs a GEMV over the packed layout (one weight stream).
    """
    op = "int8_weight_matmul"
    packed = w_int8 if isinstance(w_int8, PackedInt8Weight) else None
    if packed is not None:
        w_int8 = packed.weight
    _tensor(op, "x", x, X_DTYPES, "float32, bfloat16 or float16")
    _tensor(op, "w_int8", w_int8, (torch.int8,), "int8")
    _tensor(op, "w_scale", w_scale)
    if not w_scale.is_floating_point():
        raise TypeError(f"{op}: w_scale must be floating point, got {w_scale.dtype}")
    if x.dim() < 1 or w_int8.dim() != 2:
        raise ValueError(f"{op}: x must be (..., K) and w_int8 (N, K), got shapes {tuple(x.shape)} and "
                         f"{tuple(w_int8.shape)}")
    n, k = w_int8.shape
    if x.shape[-1] != k:
        raise ValueError(f"{op}: K mismatch: x has K={x.shape[-1]} (shape {tuple(x.shape)}) but w_int8 (N, K) has "
                         f"K={k} (shape {tuple(w_int8.shape)})")
    if k == 0 or n == 0:
        raise ValueError(f"{op}: w_int8 must be non-empty, got shape {tuple(w_int8.shape)}")
    _same_device(op, x, w_int8=w_int8, w_scale=w_scale, bias=bias)
    if group_size is None:
        if w_scale.shape not in ((n,), (n, 1)):
            raise ValueError(f"{op}: per-channel w_scale must have shape ({n},), got {tuple(w_scale.shape)} "
                             "(pass group_size for per-group scales)")
        group_size = k
    else:
        group_size = check_group_size(op, group_size, k)
        if w_scale.shape != (n, k // group_size):
            raise ValueError(f"{op}: with group_size={group_size} w_scale must have shape ({n}, {k // group_size}), "
                             f"got {tuple(w_scale.shape)}")
    scale2d = w_scale.reshape(n, k // group_size).to(torch.float32).contiguous()
    if bias is not None:
        _tensor(op, "bias", bias)
        if not bias.is_floating_point() or bias.shape != (n,):
            raise ValueError(f"{op}: bias must be a float tensor of shape ({n},), got {bias.dtype} {tuple(bias.shape)}")
        bias = bias.to(torch.float32).contiguous()
    lead = x.shape[:-1]
    x2d = x.reshape(-1, k).contiguous()
    w = w_int8.contiguous()
    if forced_backend() == "reference":
        out = reference.int8_weight_matmul(x2d, w, scale2d, bias, group_size)
    elif packed is not None and group_size == k and x2d.device.type == "cpu" and packed.usable_for_w8a16(x2d.shape[0]) \
            and not (x2d.requires_grad or (bias is not None and bias.requires_grad)):  # the GEMV has no autograd
        out = torch.ops.fastlm.int8_weight_packed_matmul(x2d, packed.packed, n, scale2d.reshape(n), bias)
    else:
        out = torch.ops.fastlm.int8_weight_matmul(x2d, w, scale2d, bias, group_size)
    return out.reshape(*lead, n)
