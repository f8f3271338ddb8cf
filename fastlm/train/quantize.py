"""`fastlm quantize`: a finished run -> a quantized run directory that `fastlm eval` / `generate` load.

The output holds the run's config.toml and tokenizer.json, model.safetensors with int8 weights and
fp32 scales, and quantization.json (which modules are Int8Linear: see fastlm.quant.saved). It is
written under a temporary name and renamed into place, so a failure leaves nothing behind. An
encrypted run ([checkpoint] encrypt = true) gives an encrypted one, with a run id of its own.
"""
from __future__ import annotations

from pathlib import Path

from fastlm.privacy.encryption import encryption_for
from fastlm.quant import SCHEMES, quantization_record, quantize_model
from fastlm.quant.saved import write_quantization
from fastlm.train.errors import FastlmError
from fastlm.train.run import load_run
from fastlm.train.run_dir import derived_run_dir
from fastlm.train.weights import save_weights

CALIBRATION_BATCHES = 8


def quantize_run(run_dir: str | Path, out: str | Path, scheme: str, skip: list[str] | tuple = (),
                 smooth: float | None = None, group_size: int | None = None,
                 calibration_batches: int = CALIBRATION_BATCHES) -> dict:
    """Quantize the final model of `run_dir` into the new directory `out`; returns a summary."""
    out = Path(out)
    if scheme not in SCHEMES:
        raise FastlmError(f"--scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FastlmError(f"output directory {out} already exists and is not empty")
    if Path(run_dir).resolve() == out.resolve():
        raise FastlmError("the output directory must differ from the run directory")
    config, model, tokenizer_path = load_run(run_dir)
    if config.model.lora is not None:  # quantizing would drop the adapters
        raise FastlmError(f"{run_dir} is a LoRA run: fold its adapters in first (fastlm merge {run_dir} --out DIR)")
    if quantization_record(model) is not None:
        raise FastlmError(f"{run_dir} is quantized already")
    before = _weight_bytes(model)
    batches = _calibration_batches(config, tokenizer_path, calibration_batches) if smooth is not None else None
    quantize_model(model, scheme, skip=skip, smooth=smooth, calibration_batches=batches, group_size=group_size)
    record = quantization_record(model)

    with derived_run_dir(out, run_dir, tokenizer_path) as tmp:
        save_weights(model, tmp, encryption_for(tmp, config.checkpoint, create_id=True))
        write_quantization(tmp, record)
    return {"out": str(out), "scheme": scheme, "layers": len(record["modules"]),
            "bytes_before": before, "bytes_after": _weight_bytes(model)}


def _calibration_batches(config, tokenizer_path: Path, count: int) -> list:
    """The first `count` batches of the run's training split (the data the activations came from)."""
    from fastlm.data import eval_batches, prepare_corpus
    from fastlm.train.data import deid_options

    d, t = config.data, config.train
    corpus = prepare_corpus(d.source, tokenizer_path=tokenizer_path, text_field=d.text_field,
                            val_fraction=d.val_fraction, builtin_modules=d.builtin_modules, show_progress=False,
                            **deid_options(d))  # the de-identified text the run trained on
    return eval_batches(corpus.train_tokens, seq_len=d.seq_len, batch_size=t.micro_batch_size, num_batches=count)


def _weight_bytes(model) -> int:
    tensors = {t.data_ptr(): t for t in model.state_dict().values()}  # a tied weight counts once
    return sum(t.numel() * t.element_size() for t in tensors.values())
