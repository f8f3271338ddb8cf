"""Fitting a statistical language model (model.family = "ngram" | "hmm") as a run.

The same data, tokenizer, validation tokens, run directory and metrics as a Transformer run,
so their perplexities sit in one table; a fit replaces the gradient steps:

    ngram   counts + smoothing (fastlm.lm.NGramLM) -> RUN_DIR/model.arpa
    hmm     Baum-Welch EM (fastlm.lm.HMM)            -> RUN_DIR/model.safetensors

`fastlm train`, `fastlm eval` and `fastlm generate` come here for these families.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fastlm.train.config import Config, ConfigError, load_saved_config
from fastlm.train.data import run_corpus, validation_batches
from fastlm.train.errors import CheckpointError, FastlmError
from fastlm.train.metrics import MetricsLog
from fastlm.train.run_dir import RunDirectory, choose_run_dir
from fastlm.train.trainer import resolved_config


@dataclass(frozen=True)
class FittedFamily:
    weights_file: str                                        # the model file in the run directory
    fit: Callable[[Config, np.ndarray, Callable[[str], None]], object]
    save: Callable[[object, Path], None]
    load: Callable[[Path], object]
    window_logprobs: Callable[[object, torch.Tensor], torch.Tensor]  # (B, T) -> log p of each token given the window before it
    next_logprobs: Callable[[object, torch.Tensor], torch.Tensor]    # a history (T,) -> log p of the next token


def _fit_ngram(config: Config, tokens: np.ndarray, say) -> object:
    from fastlm.lm import NGramLM

    m = config.model
    # The training split is one token stream with an eos after each document, as a GPT sees it:
    # the n-gram learns eos as a token too, so it scores the same validation windows.
    return NGramLM.fit(torch.from_numpy(np.asarray(tokens, dtype=np.int64)), order=m.order, smoothing=m.smoothing,
                       vocab_size=m.vocab_size, prune=m.prune, k=m.k)


def _fit_hmm(config: Config, tokens: np.ndarray, say) -> object:
    from fastlm.lm import HMM

    m = config.model
    stream = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    sequences = list(stream.split(m.chunk_len))
    hmm = HMM(m.n_states, m.vocab_size, seed=config.train.seed)
    hmm.fit(sequences, n_iter=m.iterations, tol=m.tol * len(stream),  # tol is per token
            emission_pseudocount=m.emission_pseudocount)
    return hmm


def _load_ngram(path: Path):
    from fastlm.lm import NGramLM

    return NGramLM.from_arpa(path)


def _load_hmm(path: Path):
    from fastlm.lm import HMM

    return HMM.load(path)


FITTED_FAMILIES: dict[str, FittedFamily] = {
    # bos=False: the n-gram learned the training stream as a GPT does (documents split by eos tokens),
    # so a window or a prompt is a piece of that stream, not the start of a <s> sentence.
    "ngram": FittedFamily("model.arpa", _fit_ngram, lambda lm, path: lm.to_arpa(path), _load_ngram,
                          lambda lm, x: lm.logprob(x, bos=False), lambda lm, h: lm.next_token_logprobs(h, bos=False)),
    "hmm": FittedFamily("model.safetensors", _fit_hmm, lambda hmm, path: hmm.save(path), _load_hmm,
                        lambda hmm, x: hmm.token_logprobs(x), lambda hmm, h: hmm.next_token_logprobs(h)),
}


def evaluate_fitted(family: str, model, batches: list[torch.Tensor]) -> dict:
    """The validation loss a GPT reports on the same windows: the mean over batches of the mean
    -log p(token | the tokens before it in its window), for every token after the first."""
    if not batches:
        raise ValueError("no validation batches: the validation split is shorter than one sequence")
    score = FITTED_FAMILIES[family].window_logprobs
    total = sum(-score(model, x)[:, 1:].double().mean().item() for x in batches)
    val_loss = total / len(batches)
    return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}


def fit_run(config: Config, out_dir=None, resume: bool = False, show_progress: bool = True) -> dict:
    """Fit config's statistical model on [data]'s training split; write and return what a
    Transformer run does (config.toml, tokenizer.json, metrics.jsonl, the model file)."""
    m = config.model
    family = FITTED_FAMILIES[m.family]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        raise ConfigError(f"model.family = \"{m.family}\" is fitted in one process (launched with {world}); "
                          f"run it without torchrun")
    if m.init_from:
        raise ConfigError(f"model.init_from: not for model.family = \"{m.family}\" (it is fitted from the data)")
    if m.linear != "default":
        raise ConfigError(f"model.linear = \"{m.linear}\": not for model.family = \"{m.family}\" (it has no linears)")
    if resume:
        raise ConfigError(f"--resume: a model.family = \"{m.family}\" fit has no checkpoints; run it again")
    say = print if show_progress else (lambda *_: None)
    run_dir = choose_run_dir(config.name, out_dir, resume)
    tokenizer = Path(config.data.tokenizer) if config.data.tokenizer else None
    corpus = run_corpus(config, tokenizer, show_progress)
    if corpus.vocab_size > m.vocab_size:
        raise ConfigError(f"the tokenizer has {corpus.vocab_size} tokens, more than model.vocab_size = "
                          f"{m.vocab_size} (set model.vocab_size or data.vocab_size)")
    val_batches = validation_batches(config, corpus, m)
    resolved = resolved_config(config, m.architecture(), tokenizer, corpus)  # the trainer's record
    with RunDirectory(run_dir, fresh=True) as rd:
        (run_dir / "config.toml").write_text(resolved.to_toml())
        if Path(corpus.tokenizer_path).resolve() != (run_dir / "tokenizer.json").resolve():
            shutil.copyfile(corpus.tokenizer_path, run_dir / "tokenizer.json")
        say(f"fastlm: fitting a {_describe(m)} on {len(corpus.train_tokens):,} tokens")
        start = time.perf_counter()
        model = family.fit(config, corpus.train_tokens, say)
        seconds = time.perf_counter() - start
        result = evaluate_fitted(m.family, model, val_batches)
        metrics = MetricsLog(run_dir)
        try:
            for i, loglik in enumerate(getattr(model, "history", None) or []):  # EM: one record per iteration
                metrics.log({"step": i + 1, "train_loss": -loglik / len(corpus.train_tokens)})
            metrics.log({"step": len(getattr(model, "history", None) or []), **result, "fit_seconds": seconds,
                         "train_tokens": len(corpus.train_tokens), "tokens_per_s": len(corpus.train_tokens) / seconds})
        finally:
            metrics.close()
        family.save(model, run_dir / family.weights_file)
        rd.started()
    say(f"validation perplexity: {result['val_ppl']:.2f} (loss {result['val_loss']:.4f}), fitted in {seconds:.1f} s")
    say(f"run directory: {run_dir}")
    return {"step": 0, **result, "fit_seconds": seconds, "run_dir": str(run_dir), "model": model}


def _describe(m) -> str:
    if m.family == "ngram":
        return f"{m.order}-gram model ({m.smoothing})"
    return f"{m.n_states}-state HMM ({m.iterations} EM iterations at most)"


# ---------------------------------------------------------------- finished runs

def fitted_family_of(run_dir: str | Path) -> str | None:
    """"ngram" / "hmm" when run_dir is a finished fit of that family, else None (a Transformer run)."""
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        return None
    import tomllib

    try:
        family = tomllib.loads(path.read_text(encoding="utf-8")).get("model", {}).get("family")
    except tomllib.TOMLDecodeError:
        return None
    return family if family in FITTED_FAMILIES else None


def load_fitted_run(run_dir: str | Path) -> tuple[Config, object, Path]:
    """(config, fitted model, tokenizer.json path) of a finished n-gram or HMM run."""
    run_dir = Path(run_dir)
    config = load_saved_config(run_dir / "config.toml")
    family = FITTED_FAMILIES[config.model.family]
    for name in (family.weights_file, "tokenizer.json"):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"{run_dir} is not a finished fastlm run: {name} is missing")
    return config, family.load(run_dir / family.weights_file), run_dir / "tokenizer.json"


def evaluate_fitted_run(run_dir: str | Path, show_progress: bool = False) -> dict:
    config, model, tokenizer_path = load_fitted_run(run_dir)
    corpus = run_corpus(config, tokenizer_path, show_progress)
    batches = validation_batches(config, corpus, config.model)
    result = evaluate_fitted(config.model.family, model, batches)
    return {**result, "tokens": sum(b.numel() for b in batches), "run_dir": str(run_dir)}


def generate_fitted(run_dir: str | Path, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
                    top_k: int | None = 50, top_p: float | None = None, seed: int = 0) -> str:
    """The prompt and a continuation sampled from the model's next-token distribution."""
    from fastlm.data.tokenizer import find_eos_id, load_tokenizer
    from fastlm.nn.sampling import check_sampling, sample_next_token

    config, model, tokenizer_path = load_fitted_run(run_dir)
    tokenizer = load_tokenizer(tokenizer_path)
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    if not ids:
        raise FastlmError("the prompt is empty")
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    eos = find_eos_id(tokenizer)
    vocab = config.model.vocab_size
    generator = torch.Generator().manual_seed(seed)
    out = list(ids)
    next_logprobs = FITTED_FAMILIES[config.model.family].next_logprobs
    for _ in range(max_new_tokens):
        logprobs = next_logprobs(model, torch.tensor(out)).float()
        nxt = int(sample_next_token(logprobs[None], temperature, top_k, top_p, generator)[0])
        if nxt >= vocab or nxt == eos:  # the n-gram's </s> (index vocab_size) or the tokenizer's eos
            break
        out.append(nxt)
    return tokenizer.decode(out, skip_special_tokens=True)

