"""The keyword arguments of a model's forward for one language-modelling micro-batch.

    _, loss = model(**model_inputs(batch))          # the trainer, the pipeline, evaluation

A token batch (B, T) and a PackedBatch train a GPT on their own next tokens; a MaskedBatch
carries an encoder's inputs and labels. Every place that feeds the model goes through here, so
the batch types are told apart once.
"""
from __future__ import annotations

import torch

from fastlm.data.loader import PackedBatch
from fastlm.data.masking import MaskedBatch


def model_inputs(batch, return_logits: bool = False) -> dict:
    """forward(**inputs) -> (logits or None, mean loss). return_logits=False lets a causal LM take
    the fused head + loss (no (B, T, vocab) logits stored); evaluation asks for the logits."""
    if isinstance(batch, MaskedBatch):
        return batch.kwargs()
    if isinstance(batch, PackedBatch):
        return {"input_ids": batch.input_ids, "labels": batch.input_ids, "cu_seqlens": batch.cu_seqlens,
                "return_logits": return_logits}
    if isinstance(batch, torch.Tensor):
        return {"input_ids": batch, "labels": batch, "return_logits": return_logits}
    raise TypeError(f"model_inputs: expected a token tensor, PackedBatch or MaskedBatch, got {type(batch).__name__}")


def batch_rows(batch) -> int | None:
    """Sequences in a language-modelling micro-batch (a tensor, PackedBatch or MaskedBatch); None for other
    batches (a task's dict), whose micro-batches the training step weighs equally."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, (PackedBatch, MaskedBatch)):
        return batch[0].shape[0]
    return None
