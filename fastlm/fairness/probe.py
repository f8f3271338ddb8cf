"""`fastlm fairness probe RUN_DIR [--pairs FILE]`: does a language model prefer the stereotypical
sentence of pairs that differ only in a group term?

    result = probe_run("runs/tiny")                       # the built-in probe set
    result = probe_run("hf-dir", pairs="crows_pairs_anonymized.csv")
    print(format_table(result))

RUN_DIR is a fastlm run (GPT, recurrent or encoder family, also one started from model.init_from)
or a Hugging Face checkpoint directory (config.json + safetensors + tokenizer.json). Decoders score
a sentence by its log-likelihood, encoders by its pseudo-log-likelihood (scoring.py). A pair counts
for the stereotype when its `sent_more` scores higher (a tie counts one half), as in CrowS-Pairs;
the rate per bias type comes with a 95% Wilson interval: 50% is no preference. Writes
RUN_DIR/probe.json (every figure and each pair's two scores).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fastlm.fairness.pairs import ProbePair, builtin_pairs_path, read_pairs
from fastlm.fairness.scoring import log_likelihoods, pseudo_log_likelihoods
from fastlm.train.errors import CheckpointError, FastlmError

RESULT_FILE = "probe.json"
PROGRESS_CHUNK = 256  # sentences between progress updates (each chunk is scored in batches)
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass
class ProbeModel:
    """A loaded model and how it scores text: kind "decoder" (log-likelihood) or "encoder" (PLL)."""

    model: torch.nn.Module
    tokenizer: object
    kind: str
    device: torch.device
    special: dict = field(default_factory=dict)   # start (decoder); mask, prefix, suffix (encoder)
    max_len: int | None = None

    def score(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        rows = [self.tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
        extra = 1 if self.kind == "decoder" else len(self.special["prefix"]) + len(self.special["suffix"])
        for text, row in zip(texts, rows):
            if not row:
                raise FastlmError(f"probe sentence {text!r} has no tokens")
            if self.max_len is not None and len(row) + extra > self.max_len:
                raise FastlmError(f"probe sentence {text[:60]!r} is {len(row)} tokens: longer than the model's "
                                  f"context of {self.max_len}")
        out = []
        with tqdm(total=len(rows), unit="sentence", desc="scoring", disable=not show_progress, file=sys.stderr) as bar:
            for i in range(0, len(rows), PROGRESS_CHUNK):
                chunk = rows[i:i + PROGRESS_CHUNK]
                if self.kind == "decoder":
                    out.append(log_likelihoods(self.model, chunk, self.special["start"], self.device))
                else:
                    out.append(pseudo_log_likelihoods(self.model, chunk, self.special["mask"], self.device,
                                                      self.special["prefix"], self.special["suffix"]))
                bar.update(len(chunk))
        return np.concatenate(out)


def load_probe_model(path, device=None) -> ProbeModel:
    """The model of a fastlm run directory or a Hugging Face checkpoint directory, ready to score."""
    from fastlm.data.tokenizer import load_tokenizer
    from fastlm.models import Encoder, EncoderForMaskedLM, RecurrentLM, is_hf_checkpoint, load_hf_checkpoint
    from fastlm.train.run import load_run

    path = Path(path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory (expected a fastlm run or a Hugging Face checkpoint)")
    if (path / "config.toml").is_file():
        _, model, tokenizer_path = load_run(path, device)
    elif is_hf_checkpoint(path):
        tokenizer_path = path / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise CheckpointError(f"{path}: no tokenizer.json (the probe tokenizes with the checkpoint's tokenizer)")
        try:
            model = load_hf_checkpoint(path).to(device)
        except (ValueError, KeyError, OSError, RuntimeError) as e:
            raise CheckpointError(f"{path}: cannot load the Hugging Face checkpoint: {_first_line(e)}") from None
    else:
        raise CheckpointError(f"{path}: expected a fastlm run directory (config.toml) or a Hugging Face checkpoint "
                              f"(config.json + safetensors)")
    tokenizer = load_tokenizer(tokenizer_path)
    tokenizer.no_padding()  # a checkpoint's tokenizer.json may pad or truncate every text to a fixed length
    tokenizer.no_truncation()
    if isinstance(model, Encoder):
        raise FastlmError(f"{path}: an encoder without a masked-LM head: pseudo-log-likelihoods need one")
    if isinstance(model, EncoderForMaskedLM):
        return ProbeModel(model, tokenizer, "encoder", device, _encoder_tokens(tokenizer, model, path),
                          model.config.max_seq_len)
    context = None if isinstance(model, RecurrentLM) else getattr(model.config, "max_seq_len", None)  # RNNs: any length
    return ProbeModel(model, tokenizer, "decoder", device, {"start": _start_id(tokenizer, path)}, context)


def probe_run(run_dir, pairs=None, device=None, write: bool = True, show_progress: bool = False) -> dict:
    """Score every pair of `pairs` (a CrowS-Pairs-layout CSV; None: the built-in set) with the model
    of run_dir; the result (also written to run_dir/probe.json) holds the rates and every score."""
    t0 = time.perf_counter()
    pairs_path = Path(pairs) if pairs is not None else builtin_pairs_path()
    probe_pairs = read_pairs(pairs_path)
    scorer = load_probe_model(run_dir, device)
    texts = sorted({t for p in probe_pairs for t in (p.sent_more, p.sent_less)})
    score_of = dict(zip(texts, scorer.score(texts, show_progress).tolist()))
    more = np.array([score_of[p.sent_more] for p in probe_pairs])
    less = np.array([score_of[p.sent_less] for p in probe_pairs])
    result = {
        "model": str(run_dir), "kind": scorer.kind,
        "scoring": "log-likelihood" if scorer.kind == "decoder" else "pseudo-log-likelihood",
        "pairs_file": "builtin" if pairs is None else str(pairs_path),
        **stereotype_rates(probe_pairs, more, less),
        "seconds": round(time.perf_counter() - t0, 3),
        "scores": {"sent_more": more.tolist(), "sent_less": less.tolist()},
    }
    if write:
        _write_json(Path(run_dir) / RESULT_FILE, result)
    return result


def stereotype_rates(pairs: list[ProbePair], more: np.ndarray, less: np.ndarray) -> dict:
    """The stereotype preference rate (sent_more scores higher; ties count 1/2) overall, per bias
    type, per direction and per template family, each with its 95% Wilson interval."""
    more, less = np.asarray(more, dtype=np.float64), np.asarray(less, dtype=np.float64)
    if not (len(pairs) == more.size == less.size):
        raise ValueError(f"{len(pairs)} pairs, {more.size} and {less.size} scores")

    def summary(index) -> dict:
        gap = more[index] - less[index]
        wins, ties = int((gap > 0).sum()), int((gap == 0).sum())
        n = int(gap.size)
        rate = (wins + 0.5 * ties) / n
        return {"pairs": n, "stereo_preferred": wins, "ties": ties, "rate": rate,
                "ci95": list(wilson_interval(wins + 0.5 * ties, n)), "mean_gap": float(gap.mean())}

    def grouped(key) -> dict:
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(pairs):
            groups.setdefault(key(p), []).append(i)
        return {name: summary(np.array(index)) for name, index in sorted(groups.items())}

    out = {"overall": summary(np.arange(len(pairs))), "by_bias_type": grouped(lambda p: p.bias_type),
           "by_direction": grouped(lambda p: p.direction)}
    if any(p.template for p in pairs):
        out["by_template"] = grouped(lambda p: p.template or "-")
    return out


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion (successes of n)."""
    if n <= 0:
        raise ValueError("wilson_interval needs n >= 1")
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def format_table(result: dict) -> str:
    """The table `fastlm fairness probe` prints."""
    lines = [f"{'group':28} {'pairs':>6} {'stereotype preference [95% CI]':>32} {'ties':>5}"]

    def row(name: str, s: dict) -> str:
        lo, hi = s["ci95"]
        return f"{name:28} {s['pairs']:6d} {100 * s['rate']:14.1f}% [{100 * lo:5.1f}, {100 * hi:5.1f}]% {s['ties']:5d}"

    lines.append(row("all", result["overall"]))
    for title in ("by_bias_type", "by_template", "by_direction"):
        for name, s in result.get(title, {}).items():
            lines.append(row(f"  {title[3:]}: {name}", s))
    lines.append(f"({result['kind']}: {result['scoring']}; pairs: {result['pairs_file']}; 50% = no preference)")
    return "\n".join(lines)


def _encoder_tokens(tokenizer, model, path) -> dict:
    from fastlm.data.masking import SpecialTokens

    vocab = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
    special = SpecialTokens.of(tokenizer, vocab)
    if special.mask >= model.config.vocab_size:
        raise FastlmError(f"{path}: the tokenizer has no mask token and the model has no id after its "
                          f"{vocab} tokens for one")
    own = special.cls < vocab  # a pretrained tokenizer's [CLS]/[SEP] (fastlm's own encoders train without them)
    return {"mask": special.mask, "prefix": [special.cls] if own else [], "suffix": [special.sep] if own else []}


def _start_id(tokenizer, path) -> int:
    """What a sentence is scored after: the tokenizer's begin-of-text token, else its end-of-text
    (a fastlm corpus puts it between documents)."""
    from fastlm.data.tokenizer import BOS_CANDIDATES, find_eos_id

    for token in BOS_CANDIDATES:
        if tokenizer.token_to_id(token) is not None:
            return tokenizer.token_to_id(token)
    try:
        return find_eos_id(tokenizer, f"{path}/tokenizer.json")
    except ValueError as e:
        raise FastlmError(str(e)) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
