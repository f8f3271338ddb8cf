"""`fastlm export`: a finished run as a Hugging Face checkpoint directory.

    export_run("runs/tiny", "out/tiny-hf")   # config.json + model.safetensors + tokenizer.json

transformers.AutoModel.from_pretrained(out) (or the matching *ForCausalLM / *ForMaskedLM class)
loads the result. GPT runs become GPT2LMHeadModel / LlamaForCausalLM, encoder runs
BertForMaskedLM / RobertaForMaskedLM / AlbertForMaskedLM (*ForPreTraining with sentence order).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from fastlm.train.errors import FastlmError

FORMATS = ("hf",)


def export_run(run_dir: str | Path, out: str | Path, format: str = "hf") -> Path:
    from fastlm.models import to_hf
    from fastlm.train.run import load_run

    if format not in FORMATS:
        raise FastlmError(f"export format {format!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FastlmError(f"export: {out} already exists and is not an empty directory")
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise FastlmError("export --format hf needs transformers (pip install 'fastlm[hf]')") from None
    _, model, tokenizer_path = load_run(run_dir)
    try:
        hf = to_hf(model.float().eval())
    except (ValueError, RuntimeError, KeyError) as e:
        raise FastlmError(f"export: {run_dir} cannot be written as a Hugging Face model: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    shutil.copyfile(tokenizer_path, out / "tokenizer.json")
    return out
