"""Validation loss over a fixed set of batches (the same numbers in training and `fastlm eval`)."""
from __future__ import annotations

import math
from contextlib import AbstractContextManager

import torch
from torch import nn

from fastlm.data.inputs import model_inputs


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[torch.Tensor], device: torch.device,
             autocast: AbstractContextManager) -> dict:
    """Mean next-token loss over `batches` (equal-sized, so the mean of batch means is exact)."""
    if not batches:
        raise ValueError("no validation batches: the validation split is shorter than one sequence")
    was_training = model.training
    model.eval()
    total = 0.0
    for x in batches:
        with autocast:
            _, loss = model(**model_inputs(x.to(device, non_blocking=True), return_logits=True))
        total += loss.float().item()
    model.train(was_training)
    val_loss = total / len(batches)
    return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}


def evaluate_run(run_dir, device=None, show_progress: bool = False) -> dict:
    """Validation loss/perplexity of a finished run's model, on the batches its training used."""
    from fastlm.train.data import run_corpus, validation_batches
    from fastlm.train.run import load_run
    from fastlm.train.runtime import resolve_precision
    from fastlm.train.statistical import evaluate_fitted_run, fitted_family_of
    from fastlm.train.step import autocast_for

    if fitted_family_of(run_dir):  # an n-gram or HMM run
        return evaluate_fitted_run(run_dir, show_progress)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config, model, tokenizer_path = load_run(run_dir, device, sparse=True)  # a 2:4-pruned run: compressed
    corpus = run_corpus(config, tokenizer_path, show_progress)  # the run's own tokenizer: nothing to train
    batches = validation_batches(config, corpus, model.config)
    result = evaluate(model, batches, device, autocast_for(resolve_precision(config.train.precision, device), device))
    tokens = sum(b.input_ids.numel() if hasattr(b, "input_ids") else b.numel() for b in batches)
    return {**result, "tokens": tokens, "run_dir": str(run_dir)}
