"""`fastlm prune`: a finished run -> a pruned run directory that eval, generate and training read.

The output holds the run's config.toml and tokenizer.json, model.safetensors (the pruned weights
exactly zero; with --pattern 2:4 the pruned linears stored compressed, fastlm.prune.stored24),
prune_masks.safetensors and prune.json (fastlm.prune.saved). It is written
under a temporary name and renamed into place. `fastlm eval` of it reports its perplexity; on the
CPU a 2:4 run's linears compute with the compressed 2:4 kernel (Sparse24Linear). model.init_from
= the pruned directory trains on with the masks kept (pruned weights stay zero).
"""
from __future__ import annotations

from pathlib import Path

from fastlm.prune import prune_model
from fastlm.prune.saved import pruning_record, read_pruning, write_pruning
from fastlm.prune.sparse24 import is_24
from fastlm.prune.stored24 import STORAGE
from fastlm.train.errors import FastlmError
from fastlm.train.run import load_run
from fastlm.train.run_dir import derived_run_dir
from fastlm.train.weights import save_weights


def prune_run(run_dir: str | Path, out: str | Path, sparsity: float | None = None, pattern: str = "unstructured",
              scope: str = "layer", evaluate: bool = True) -> dict:
    """Prune the final model of `run_dir` into the new directory `out`; returns a summary (with the
    validation loss/perplexity before and after when evaluate)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FastlmError(f"output directory {out} already exists and is not empty")
    if Path(run_dir).resolve() == out.resolve():
        raise FastlmError("the output directory must differ from the run directory")
    if (Path(run_dir) / "quantization.json").is_file():
        raise FastlmError(f"{run_dir} is quantized (int8 weights): prune the run it was quantized from")
    config, model, tokenizer_path = load_run(run_dir)
    if config.checkpoint.encrypt:
        raise FastlmError(f"{run_dir} is an encrypted run: pruning encrypted runs is not available yet")
    try:
        masks = prune_model(model, sparsity, pattern, scope)
    except ValueError as e:
        raise FastlmError(str(e)) from None
    earlier = read_pruning(run_dir)  # pruning a pruned run: what was pruned before stays pruned
    if earlier is not None:
        masks = {name: mask & earlier[1][name] if name in earlier[1] else mask for name, mask in masks.items()}
    record = pruning_record(masks, pattern, scope, source=str(run_dir))
    # 2:4 layers go to disk compressed (values + 2-bit offsets); every reader densifies them
    compress = [f"{name}.weight" for name, mask in masks.items() if pattern == "2:4" and is_24(mask)]
    if compress:
        record["storage"] = STORAGE

    with derived_run_dir(out, run_dir, tokenizer_path) as tmp:
        save_weights(model, tmp, compress24=compress)
        write_pruning(tmp, masks, record)
    summary = {"out": str(out), "pattern": pattern, "scope": scope, "sparsity": record["sparsity"],
               "layers": len(masks), "weights": sum(m.numel() for m in masks.values())}
    if evaluate:
        from fastlm.train.evaluate import evaluate_run

        summary["before"] = evaluate_run(run_dir, device="cpu")
        summary["after"] = evaluate_run(out, device="cpu")
    return summary
