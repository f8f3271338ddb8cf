"""Validation loss over a fixed set of batches (the same numbers in training and `fastlm eval`)."""
from __future__ import annotations

import math
from contextlib import AbstractContextManager

import torch
from torch import nn


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
        x = x.to(device, non_blocking=True)
        with autocast:
            if hasattr(x, "kwargs"):  # a MaskedBatch (masked LM): the loss of the masked tokens
                _, loss = model(**x.kwargs())
            else:
                _, loss = model(x, labels=x)
        total += loss.float().item()
    model.train(was_training)
    val_loss = total / len(batches)
    return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}


def evaluate_run(run_dir, device=None, show_progress: bool = False) -> dict:
    """Validation loss/perplexity of a finished run's model, on the batches its training used."""
    from pathlib import Path

    from fastlm.data import eval_batches, prepare_corpus
    from fastlm.train.run import load_run
    from fastlm.train.trainer import autocast_for, resolve_precision

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config, model, tokenizer_path = load_run(run_dir, device)
    d, t = config.data, config.train
    kwargs = dict(text_field=d.text_field, val_fraction=d.val_fraction, builtin_modules=d.builtin_modules,
                  show_progress=show_progress)
    corpus = prepare_corpus(d.source, vocab_size=d.vocab_size, tokenizer_path=d.tokenizer, **kwargs)
    if Path(corpus.tokenizer_path).read_bytes() != Path(tokenizer_path).read_bytes():
        # The cached corpus was rebuilt with another tokenizer: tokenize with the run's own.
        corpus = prepare_corpus(d.source, tokenizer_path=tokenizer_path, **kwargs)
    if config.model.is_encoder:  # the masked validation sequences of training (fixed masks)
        from fastlm.data.masking import masked_eval_batches
        from fastlm.train.trainer import masked_lm_rule

        batches = masked_eval_batches(corpus.val_tokens, rule=masked_lm_rule(config, corpus, model.config.vocab_size),
                                      seq_len=d.seq_len, batch_size=t.micro_batch_size, num_batches=t.eval_batches)
    else:
        batches = eval_batches(corpus.val_tokens, seq_len=d.seq_len, batch_size=t.micro_batch_size,
                               num_batches=t.eval_batches)
    precision = resolve_precision(t.precision, device)
    result = evaluate(model, batches, device, autocast_for(precision, device))
    tokens = sum((b.input_ids if hasattr(b, "kwargs") else b).numel() for b in batches)
    return {**result, "tokens": tokens, "run_dir": str(run_dir)}
