"""Text generation from a finished run (KV cache, temperature, top-k, top-p)."""
from __future__ import annotations

from pathlib import Path

import torch

from fastlm.data.tokenizer import find_eos_id, load_tokenizer
from fastlm.models import GPT
from fastlm.train.errors import FastlmError
from fastlm.train.run import load_run


def generate_text(run_dir: str | Path, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
                  top_k: int | None = 50, top_p: float | None = None, seed: int = 0,
                  device: str | torch.device | None = None, watermark=None) -> str:
    """The prompt and its sampled continuation. Stops at max_new_tokens, end of text or the context.
    watermark: a fastlm.accountability.watermark.WatermarkKey to embed in the continuation (GPT runs)."""
    from fastlm.train.statistical import fitted_family_of, generate_fitted

    if watermark is not None and fitted_family_of(run_dir):
        raise FastlmError(f"--watermark: {run_dir} is an n-gram or HMM run; watermarked generation needs a "
                          f"Transformer run")
    if fitted_family_of(run_dir):  # an n-gram or HMM run: no device, no context limit
        return generate_fitted(run_dir, prompt, max_new_tokens, temperature, top_k, top_p, seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config, model, tokenizer_path = load_run(run_dir, device, sparse=True)  # a 2:4-pruned run: compressed
    if config.model.is_encoder:
        raise FastlmError(f"{run_dir} is a masked-LM encoder (model.family = {config.model.family!r}): "
                          f"it does not generate text")
    tokenizer = load_tokenizer(tokenizer_path)
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    context = model.config.max_seq_len
    if not ids:
        raise FastlmError("the prompt is empty")
    if len(ids) > context:
        raise FastlmError(f"the prompt is {len(ids)} tokens, longer than the model's context of "
                          f"{context} tokens (model.max_seq_len)")
    if watermark is not None and not isinstance(model, GPT):
        raise FastlmError(f"--watermark: model.family = {config.model.family!r} does not support it yet "
                          f"(GPT and LLaMA runs do)")
    generator = torch.Generator(device=device).manual_seed(seed)
    extra = {"logits_processor": watermark.processor()} if watermark is not None else {}
    try:  # GPT.generate checks the sampling settings; its ValueError becomes a one-line CLI error
        out = model.generate(torch.tensor([ids], device=device), max_new_tokens, temperature=temperature,
                             top_k=top_k, top_p=top_p, eos_token_id=find_eos_id(tokenizer), generator=generator, **extra)
    except ValueError as error:
        raise FastlmError(str(error)) from None
    return tokenizer.decode(out[0].tolist(), skip_special_tokens=True)
