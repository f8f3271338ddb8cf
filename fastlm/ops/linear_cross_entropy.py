"""The LM head's matmul and the cross-entropy, fused and chunked over tokens.

    loss = fastlm.ops.linear_cross_entropy(hidden, lm_head.weight, labels)

equals cross_entropy(hidden @ weight.T, labels) (same options), but only one chunk of
chunk_size x V logits exists at a time: the (tokens x vocab) logits, usually the largest
activation of LM training, are never stored.

How: the forward computes, per chunk, logits = h_c @ W^T and the per-row loss and logsumexp
(fastlm.ops.cross_entropy's kernels: C++ on CPU, Triton on CUDA). Two ways to the gradients:
- grads_in_forward (the default when training with reduction "mean"/"sum", as Liger-Kernel does):
  while a chunk's logits are at hand, dlogits for a unit upstream gradient per row gives
  grad_hidden[c] = dlogits @ W and grad_weight += dlogits^T @ h_c (fp32); the backward scales
  them by the upstream gradient (exact: the counted rows share it under mean/sum). Three matmuls,
  but grad_hidden and grad_weight are held from the forward to the backward;
- otherwise (reduction="none", or an upstream gradient that differs per row) the forward keeps
  only lse (N floats) and the backward recomputes each chunk's logits: one more matmul, nothing held.
Under torch.autocast the matmuls run in the autocast dtype, like an nn.Linear head would; on a CPU
without fast 16-bit GEMMs (AVX2) 16-bit inputs are computed in fp32 instead (as fastlm.ops.matmul does).
The op takes the weight in its own dtype (the fp32 master weight under autocast) and casts it to
hidden's inside: its gradient, accumulated in fp32, is returned as is, instead of being rounded to
16 bits and converted back to fp32 by autograd (two (V, d) copies and a lossy round trip per step).
"""
from __future__ import annotations

import torch

from fastlm.ops import reference_cross_entropy as reference
from fastlm.ops._backend import use_reference
from fastlm.ops._library import has_native_op, register_backward_op, register_op
from fastlm.ops.cross_entropy import check_labels, check_loss_options, reduce_loss
from fastlm.ops.matmul import cpu_gemm16_is_native

# Elements of one chunk's logits (2^22 = 16 MiB in fp32): 128 tokens of a 32k vocabulary.
CHUNK_ELEMENTS = 1 << 22


def _mm(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x @ y; fp32 on the CPU through fastlm's fp32 GEMM (torch's BLAS or oneDNN, the faster here: see matmul)."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and has_native_op("mm_f32"):
        return torch.ops.fastlm.mm_f32(x, y)
    return torch.mm(x, y, out=out)


def _chunks(n: int, chunk_size: int):
    for start in range(0, n, chunk_size):
        yield start, min(n, start + chunk_size)


def _fwd(hidden, weight, labels, ignore_index, label_smoothing, z_loss, chunk_size, grads_in_forward):
    n = hidden.shape[0]
    loss = hidden.new_empty(n, dtype=torch.float32)
    lse = hidden.new_empty(n, dtype=torch.float32)
    grad_hidden, grad_weight = _unit_grads_buffers(hidden, weight, grads_in_forward)
    weight = weight.to(hidden.dtype)  # the compute copy (a no-op when the dtypes match)
    buffer = hidden.new_empty(min(n, chunk_size), weight.shape[0])  # one chunk's logits, reused
    acc = {}  # _accumulate's state across chunks
    for s, e in _chunks(n, chunk_size):
        logits = _mm(hidden[s:e], weight.t(), out=buffer[: e - s])
        loss[s:e], lse[s:e] = torch.ops.fastlm.cross_entropy_fwd(logits, labels[s:e], ignore_index, label_smoothing,
                                                                 z_loss)
        if grads_in_forward:  # the gradients for a unit upstream gradient per row, from the logits at hand
            dlogits = torch.ops.fastlm.cross_entropy_bwd(torch.ones_like(lse[s:e]), logits, labels[s:e], lse[s:e],
                                                         ignore_index, label_smoothing, z_loss)
            _accumulate(dlogits, hidden[s:e], weight, grad_hidden[s:e], grad_weight, acc)
    return loss, lse, grad_hidden, grad_weight


def _unit_grads_buffers(hidden, weight, wanted: bool):
    if not wanted:
        return hidden.new_empty(0), weight.new_empty(0, dtype=torch.float32)
    return torch.empty_like(hidden), _weight_grad_buffer(hidden, weight)


def _weight_grad_buffer(hidden, weight):
    """The fp32 weight gradient's buffer: the first chunk writes it (_accumulate), so only an empty input
    leaves it to be zeroed here (a zero fill of a fresh (V, d) buffer costs its page faults)."""
    new = torch.zeros if hidden.shape[0] == 0 else torch.empty
    return new(weight.shape, dtype=torch.float32, device=weight.device)


def _accumulate(dlogits, h, weight, grad_hidden_rows, grad_weight, acc: dict | None = None):
    """grad_hidden_rows = dlogits @ weight; grad_weight (fp32) = (first chunk) or += dlogits^T @ h.

    acc: the state of one loop over chunks (None: grad_weight is initialized, every chunk adds). A 16-bit
    chunk product is converted into one fp32 buffer reused over the chunks: `grad_weight += product`
    with mixed dtypes would make a fresh fp32 (V, d) copy per chunk."""
    acc = {"started": True} if acc is None else acc
    first = not acc.get("started", False)
    acc["started"] = True
    if dlogits.device.type == "cpu" and dlogits.dtype == torch.float32 and has_native_op("mm_f32"):
        grad_hidden_rows.copy_(_mm(dlogits, weight))
        product = _mm(dlogits.t(), h)
        grad_weight.copy_(product) if first else grad_weight.add_(product)
        return
    _mm(dlogits, weight, out=grad_hidden_rows)
    if dlogits.dtype == torch.float32:  # fp32 accumulation of the weight gradient (in place when fp32)
        torch.mm(dlogits.t(), h, out=grad_weight) if first else grad_weight.addmm_(dlogits.t(), h)
        return
    product = _mm(dlogits.t(), h)
    if first:
        grad_weight.copy_(product)
        return
    if "fp32" not in acc:
        acc["fp32"] = torch.empty_like(grad_weight)
    grad_weight.add_(acc["fp32"].copy_(product))


def _uniform_over_counted_rows(grad_loss, labels, ignore_index) -> bool:
    """True when every counted row has the same upstream gradient (reduction mean/sum): then the
    weight gradient is that number times the one computed in the forward."""
    g = grad_loss[labels != ignore_index]
    return g.numel() == 0 or bool((g == g[0]).all())


def _bwd(grad_loss, hidden, weight, labels, lse, grad_hidden_unit, grad_weight_unit, ignore_index, label_smoothing,
         z_loss, chunk_size):
    if grad_weight_unit.numel() and _uniform_over_counted_rows(grad_loss, labels, ignore_index):
        g = grad_loss.to(torch.float32)
        counted = g[labels != ignore_index]
        scale = counted[0] if counted.numel() else g.new_zeros(())
        grad_hidden = (grad_hidden_unit.to(torch.float32) * g[:, None]).to(hidden.dtype)
        return grad_hidden, (grad_weight_unit * scale).to(weight.dtype)
    # Recompute each chunk's logits (no gradients from the forward, or per-row upstream gradients).
    grad_hidden = torch.empty_like(hidden)
    grad_weight = _weight_grad_buffer(hidden, weight)
    weight_dtype, weight = weight.dtype, weight.to(hidden.dtype)
    buffer = hidden.new_empty(min(hidden.shape[0], chunk_size), weight.shape[0])  # one chunk's logits, reused
    acc = {}
    for s, e in _chunks(hidden.shape[0], chunk_size):
        logits = _mm(hidden[s:e], weight.t(), out=buffer[: e - s])
        dlogits = torch.ops.fastlm.cross_entropy_bwd(grad_loss[s:e], logits, labels[s:e], lse[s:e], ignore_index,
                                                     label_smoothing, z_loss)
        _accumulate(dlogits, hidden[s:e], weight, grad_hidden[s:e], grad_weight, acc)
    return grad_hidden, grad_weight.to(weight_dtype)


def _fake_fwd(hidden, weight, labels, ignore_index, label_smoothing, z_loss, chunk_size, grads_in_forward):
    n = hidden.shape[0]
    grad_hidden, grad_weight = _unit_grads_buffers(hidden, weight, grads_in_forward)
    return hidden.new_empty(n, dtype=torch.float32), hidden.new_empty(n, dtype=torch.float32), grad_hidden, grad_weight


# No native op: the chunk loops above are the CPU and CUDA implementation (their matmuls are torch's,
# their cross-entropy kernels fastlm's).
register_op("linear_cross_entropy_fwd", reference=_fwd, triton=None, fake=_fake_fwd)
register_op("linear_cross_entropy_bwd", reference=_bwd, triton=None,
            fake=lambda g, hidden, weight, *rest: (torch.empty_like(hidden), torch.empty_like(weight)))


def _setup(ctx, inputs, output):
    hidden, weight, labels, ignore_index, label_smoothing, z_loss, chunk_size, _grads_in_forward = inputs
    _loss, lse, grad_hidden_unit, grad_weight_unit = output
    ctx.save_for_backward(hidden, weight, labels, lse, grad_hidden_unit, grad_weight_unit)
    ctx.params = (ignore_index, label_smoothing, z_loss, chunk_size)
    ctx.set_materialize_grads(False)  # no zero (V, d) gradient for the unused grad_weight_unit output


def _backward(ctx, grad_loss, _grad_lse, _g1, _g2):
    if grad_loss is None:  # (gradients are not materialized) nothing flows back through the losses
        return (None,) * 8
    hidden, weight, labels, lse, grad_hidden_unit, grad_weight_unit = ctx.saved_tensors
    grad_hidden, grad_weight = torch.ops.fastlm.linear_cross_entropy_bwd(
        grad_loss, hidden, weight, labels, lse, grad_hidden_unit, grad_weight_unit, *ctx.params)
    return grad_hidden, grad_weight, None, None, None, None, None, None


torch.library.register_autograd("fastlm::linear_cross_entropy_fwd", _backward, setup_context=_setup)
register_backward_op("linear_cross_entropy_bwd")


def default_chunk_size(vocab: int) -> int:
    return max(16, CHUNK_ELEMENTS // vocab)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         ignore_index: int = -100, label_smoothing: float = 0.0, z_loss: float = 0.0,
                         reduction: str = "mean", chunk_size: int | None = None,
                         grads_in_forward: bool | None = None) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, labels, ...) without the logits in memory.

    hidden (..., d), weight (V, d) (an nn.Linear / lm_head weight, no bias), labels (...) integers.
    chunk_size: tokens per chunk (default: 2^22 / V, at least 16). Returns fp32 (see cross_entropy).
    grads_in_forward: compute the gradients in the forward, from the logits at hand (no recompute;
    holds grad_hidden and an fp32 grad_weight until the backward). Default: when gradients are
    needed and reduction is "mean" or "sum".
    """
    op = "linear_cross_entropy"
    ignore_index, label_smoothing, z_loss = check_loss_options(op, ignore_index, label_smoothing, z_loss, reduction)
    for name, t in (("hidden", hidden), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t))}")
    if weight.dim() != 2 or weight.shape[0] == 0:
        raise ValueError(f"{op}: weight must be (vocab, hidden), got {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"{op}: hidden's last dimension must be weight's ({weight.shape[1]}), "
                         f"got {tuple(hidden.shape)}")
    if hidden.device != weight.device:
        raise ValueError(f"{op}: hidden is on {hidden.device} but weight is on {weight.device}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"{op}: chunk_size must be a positive integer, got {chunk_size!r}")
    vocab, d = weight.shape
    rows = hidden.numel() // d
    shape = labels.shape if isinstance(labels, torch.Tensor) else None
    labels = check_labels(op, labels, rows, vocab, ignore_index, hidden.device)
    h = hidden.reshape(rows, d)
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):  # what an autocast nn.Linear head would compute in
        h = h.to(torch.get_autocast_dtype(device_type))  # the weight is cast inside the op (see above)
    elif h.dtype != weight.dtype:
        raise TypeError(f"{op}: hidden ({h.dtype}) and weight ({weight.dtype}) dtypes differ")
    if h.device.type == "cpu" and not cpu_gemm16_is_native(h.dtype):  # e.g. bf16 on an AVX2 CPU (see matmul)
        h = h.float()
    if use_reference(h, weight):
        losses = reference.linear_cross_entropy(h, weight.to(h.dtype), labels, ignore_index, label_smoothing, z_loss)
    else:
        if grads_in_forward is None:
            grads_in_forward = reduction != "none" and torch.is_grad_enabled() and (h.requires_grad or
                                                                                    weight.requires_grad)
        losses = torch.ops.fastlm.linear_cross_entropy_fwd(h, weight, labels, ignore_index, label_smoothing, z_loss,
                                                           chunk_size or default_chunk_size(vocab),
                                                           bool(grads_in_forward))[0]
    return reduce_loss(losses, labels, ignore_index, reduction, shape)
