"""What one micro-batch's backward recorded, per parameter, and the two results DP-SGD needs of it:
every sample's gradient norm over the whole model, and the clipped sum of the samples' gradients.

    rec = Recorder(batch_size, device)
    with recording(rec):                      # fastlm.privacy.layers
        loss = model(batch); loss.backward()  # the DP layers add their uses
    norms = rec.sq_norms().sqrt()             # (B,)
    for param, grad in rec.clipped_sums(factors):   # sum_b factors_b grad_b(param)
"""
from __future__ import annotations

import torch

from fastlm.privacy.head import HeadUse, head_clipped_sum, head_embedding_dot, head_sq_norms
from fastlm.privacy.per_sample import (
    DenseUse,
    EmbeddingUse,
    LinearUse,
    concat_tokens,
    dense_clipped_sum,
    dense_sq_norms,
    embedding_clipped_sum,
    embedding_sq_norms,
    linear_clipped_sum,
    linear_embedding_dot,
    linear_sq_norms,
)

_KINDS = (LinearUse, EmbeddingUse, DenseUse, HeadUse)


class Recorder:
    def __init__(self, batch_size: int, device: torch.device | str, token_mask: torch.Tensor | None = None):
        """token_mask: (B, L) bool, the real tokens of a padded batch (an encoder computes only those)."""
        self.batch_size = int(batch_size)
        self.token_mask = token_mask.bool() if token_mask is not None else None
        self.real_tokens = int(self.token_mask.sum()) if token_mask is not None else None
        self.anchor = torch.empty(0, device=device, requires_grad=True)  # see fastlm.privacy.layers._Tap
        self._uses: dict[int, tuple[torch.nn.Parameter, list]] = {}

    def add(self, param: torch.nn.Parameter, use) -> None:
        self._uses.setdefault(id(param), (param, []))[1].append(use)

    def params(self) -> list[torch.nn.Parameter]:
        return [p for p, _ in self._uses.values()]

    def _merged(self, param_id: int) -> dict[type, object]:
        """The parameter's uses, one per kind (uses of a kind concatenated along the tokens)."""
        param, uses = self._uses[param_id]
        merged = {}
        for kind in _KINDS:
            of_kind = [u for u in uses if isinstance(u, kind)]
            if len(of_kind) > 1 and kind is HeadUse:
                raise ValueError("DP-SGD: a weight used by two fused cross-entropy heads is not supported")
            if of_kind:
                merged[kind] = concat_tokens(of_kind)[0]
        if DenseUse in merged and len(merged) > 1:
            raise ValueError(f"DP-SGD: a parameter of shape {tuple(param.shape)} is used both as a bias/norm "
                             f"weight and as a matrix")
        if LinearUse in merged and HeadUse in merged:
            raise ValueError("DP-SGD: a weight used both by a linear layer and by the fused head is not supported")
        return merged

    def sq_norms(self, tp_group=None) -> torch.Tensor:
        """(B,) squared norms of every sample's whole gradient (fp32; fp64 when the model is).

        tp_group (tensor parallelism): the shards' norms (parameters with `_tp_parts`) are summed over
        the tp ranks; a replicated parameter counts once, and one whose gradient each rank only gets part
        of (`_tp_grad_summed`: sequence-parallel norms) has its per-sample gradients summed first."""
        parts, sharded = [], []
        for param_id, (param, _) in self._uses.items():
            merged = self._merged(param_id)
            if tp_group is not None and getattr(param, "_tp_grad_summed", False) and DenseUse in merged:
                whole = merged[DenseUse].per_sample.clone()
                torch.distributed.all_reduce(whole, group=tp_group)
                merged[DenseUse] = DenseUse(whole)
            part = 0.0
            lin, emb, dense, head = (merged.get(k) for k in _KINDS)
            if lin is not None:
                part = part + linear_sq_norms(lin)
            if emb is not None:
                part = part + embedding_sq_norms(emb, param.shape[0])
            if dense is not None:
                part = part + dense_sq_norms(dense)
            if head is not None:
                part = part + head_sq_norms(head)
            if emb is not None and lin is not None:  # tied: the MLM decoder and the token embedding
                part = part + 2 * linear_embedding_dot(lin, emb)
            if emb is not None and head is not None:  # tied: the LM head and the token embedding
                part = part + 2 * head_embedding_dot(head, emb.ids, emb.g)
            (sharded if tp_group is not None and hasattr(param, "_tp_parts") else parts).append(part)
        dtype = torch.float64 if any(p.dtype == torch.float64 for p in parts + sharded) else torch.float32
        total = torch.zeros(self.batch_size, device=self.anchor.device, dtype=dtype)
        for part in sharded:
            total += part
        if tp_group is not None:
            torch.distributed.all_reduce(total, group=tp_group)
        for part in parts:
            total += part
        return total

    def clipped_sums(self, factors: torch.Tensor):
        """Yields (param, sum_b factors_b * grad_b(param)) in the parameter's dtype, in backward order.

        Each parameter's uses are released once its sum is taken, so the saved inputs and output
        gradients make way for the gradients instead of adding to them (the recorder is spent)."""
        for param_id in list(self._uses):
            param = self._uses[param_id][0]
            merged = self._merged(param_id)
            self._uses[param_id] = (param, [])
            acc_dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
            grad = torch.zeros(param.shape, dtype=acc_dtype, device=param.device)
            for kind, use in merged.items():
                if kind is LinearUse:
                    linear_clipped_sum(use, factors, grad)
                elif kind is EmbeddingUse:
                    embedding_clipped_sum(use, factors, grad)
                elif kind is DenseUse:
                    dense_clipped_sum(use, factors, grad)
                else:
                    head_clipped_sum(use, factors, grad)
            yield param, grad.to(param.dtype)
