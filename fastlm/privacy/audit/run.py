"""`fastlm privacy audit RUN`: membership inference and canary exposure of a finished run.

    result = audit_run("runs/tiny", canaries=None, reference=None, samples=1000, seed=0)

Writes RUN/audit.json (every figure) and RUN/audit_roc.png; see membership.py for how members and
non-members are chosen and exposure.py for the exposure estimate.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from fastlm.data.canaries import read_record
from fastlm.privacy.audit import exposure, membership, metrics
from fastlm.privacy.audit.plot import plot_roc
from fastlm.privacy.audit.scoring import window_losses
from fastlm.train.errors import CheckpointError, FastlmError

RESULT_FILE = "audit.json"
PLOT_FILE = "audit_roc.png"
ATTACKS = {"loss": "loss threshold", "reference": "reference-model likelihood ratio"}


def audit_run(run_dir, *, canaries: int | None = None, reference=None, samples: int = 1000, seed: int = 0,
              candidates: int = 2000, resamples: int = 1000, device=None, show_progress: bool = True) -> dict:
    from fastlm.train.data import run_corpus
    from fastlm.train.run import load_run

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise CheckpointError(f"{run_dir} is not a fastlm run directory (no config.toml)")
    for name, value in (("--samples", samples), ("--candidates", candidates), ("--resamples", resamples)):
        if value < 1:
            raise FastlmError(f"{name} = {value}: expected a positive integer")
    record = read_record(run_dir)
    if canaries is not None:
        if record is None:
            raise FastlmError(f"--canaries: run {run_dir} planted no canaries (train it with data.canaries = N)")
        if canaries < 0:
            raise FastlmError(f"--canaries = {canaries}: expected a number >= 0")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config, model, tokenizer_path = load_run(run_dir, device)
    if config.model.is_encoder:
        raise FastlmError(f"{run_dir} holds a masked-LM encoder: the audit scores causal language models")
    corpus = run_corpus(config, tokenizer_path, show_progress)  # with the same canaries, re-planted
    seq_len = config.data.seq_len

    reference_docs, eval_tokens = membership.held_out_halves(np.asarray(corpus.val_tokens), corpus.eos_id)
    members, nonmembers = membership.choose_samples(corpus.train_tokens, eval_tokens, seq_len, samples, seed)
    trained_reference = reference is None
    if trained_reference:
        reference = membership.train_reference(run_dir, config, corpus, reference_docs, show_progress)
    ref_config, ref_model, _ = load_run(reference, device)
    if ref_config.data.seq_len != seq_len or (Path(reference) / "tokenizer.json").read_bytes() != tokenizer_path.read_bytes():
        raise FastlmError(f"--reference {reference}: expected a run with the audited run's tokenizer and "
                          f"data.seq_len = {seq_len}")

    loss = {"members": window_losses(model, members, device), "nonmembers": window_losses(model, nonmembers, device)}
    ref_loss = {k: window_losses(ref_model, w, device) for k, w in (("members", members), ("nonmembers", nonmembers))}
    scores = {"loss": {k: -v for k, v in loss.items()},
              "reference": {k: ref_loss[k] - loss[k] for k in loss}}
    attacks = {}
    for name, s in scores.items():
        attacks[name] = {"name": ATTACKS[name], **metrics.summarize(s["members"], s["nonmembers"],
                                                                   resamples=resamples, seed=seed)}
    result = {
        "run_dir": str(run_dir), "seed": seed,
        "samples": {"members": len(members), "nonmembers": len(nonmembers), "seq_len": seq_len,
                    "how": "members: random non-overlapping seq_len windows of the training split; non-members: "
                           "random non-overlapping windows of a random half of the held-out (validation) documents; "
                           "the other half trained the reference model"},
        "mean_loss": {"members": float(loss["members"].mean()), "nonmembers": float(loss["nonmembers"].mean())},
        "attacks": attacks,
        "reference": {"run_dir": str(reference), "trained_by_audit": trained_reference,
                      "held_out_documents": len(reference_docs)},
    }
    if record is not None and canaries != 0:
        encode = corpus.encode
        result["canaries"] = exposure.canary_exposures(model, record, encode, device, limit=canaries,
                                                       candidates=candidates, seed=seed)
    curves = {ATTACKS[n]: (*metrics.roc(s["members"], s["nonmembers"]), attacks[n]["auc"]) for n, s in scores.items()}
    result["plot"] = str(plot_roc(curves, run_dir / PLOT_FILE, f"membership inference: {run_dir.name}"))
    _write_json(run_dir / RESULT_FILE, result)
    return result


def format_table(result: dict) -> str:
    """The short table `fastlm privacy audit` prints."""
    lines = [f"{'attack':34} {'AUC [95% CI]':>24} {'TPR@1%FPR [95% CI]':>24}"]
    for a in result["attacks"].values():
        lines.append(f"{a['name']:34} {_with_ci(a['auc'], a['auc_ci']):>24} "
                     f"{_with_ci(a['tpr_at_fpr'], a['tpr_at_fpr_ci']):>24}")
    s = result["samples"]
    lines.append(f"({s['members']} members, {s['nonmembers']} non-members of {s['seq_len']} tokens; "
                 f"reference: {result['reference']['run_dir']})")
    c = result.get("canaries")
    if c:
        lines.append(f"canary exposure (of {c['log2_space']:.1f} bits max; {c['candidates']} candidates): mean "
                     f"{c['mean_exposure']:.2f} (sampled rank: {c['mean_exposure_sampled']:.2f}), {c['audited']} "
                     f"of {c['planted']} canaries")
        for row in c["canaries"][:10]:
            lines.append(f"  {row['text']!r:44} x{row['repeats']}  exposure {row['exposure']:6.2f}  "
                         f"sampled {row['exposure_sampled']:5.2f}")
    return "\n".join(lines)


def _with_ci(value: float, ci: list[float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
