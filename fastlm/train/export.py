"""`fastlm export`: a finished run as a Hugging Face checkpoint directory.

    export_run("runs/tiny", "out/tiny-hf")
    # config.json, model.safetensors, generation_config.json, tokenizer.json, tokenizer_config.json,
    # special_tokens_map.json (and the chat template of a source that had one)

transformers.AutoModel.from_pretrained(out) (or the matching *ForCausalLM / *ForMaskedLM class)
and AutoTokenizer.from_pretrained(out) load the result. GPT runs become GPT2LMHeadModel /
LlamaForCausalLM, encoder runs BertForMaskedLM / RobertaForMaskedLM / AlbertForMaskedLM
(*ForPreTraining with sentence order).

An encrypted run ([checkpoint] encrypt = true) exports an encrypted model.safetensors (bound to its
name and a run id of the export's own run_id.json): no plaintext weights are written. The other
files are plaintext; transformers loads the directory once the weights are decrypted, e.g.
Encryption(out, key_file).read(out / "model.safetensors", "model.safetensors") (fastlm.privacy.encryption).

Special tokens: a run that kept the tokenizer of a Hugging Face checkpoint it started from
(model.init_from, followed through runs started from runs) gets that checkpoint's tokenizer,
special-token and generation files and token ids. Otherwise they come from the tokenizer itself:
its end-of-text token is eos, so generate() stops there.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import tomllib

from fastlm.train.errors import FastlmError

FORMATS = ("hf",)
# What a Hugging Face checkpoint keeps of its tokenizer and generation setup, besides tokenizer.json.
SOURCE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                "chat_template.jinja", "chat_template.json")
ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def export_run(run_dir: str | Path, out: str | Path, format: str = "hf") -> Path:
    from fastlm.models import GPT, MaxEntLM, to_hf
    from fastlm.train.run import load_run

    if format not in FORMATS:
        raise FastlmError(f"export format {format!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FastlmError(f"export: {out} already exists and is not an empty directory")
    try:
        import transformers
    except ImportError:
        raise FastlmError("export --format hf needs transformers (pip install 'fastlm[hf]')") from None
    config, model, tokenizer_path = load_run(run_dir)
    if config.model.lora is not None:  # the HF model would be the base alone
        raise FastlmError(f"export: {run_dir} is a LoRA run: `fastlm merge {run_dir} --out DIR` folds its adapters "
                          f"in (then export DIR), or export its base (model.init_from) and load "
                          f"{run_dir}/adapter.safetensors onto it with PEFT")
    if isinstance(model, MaxEntLM):
        raise FastlmError(f"export: {run_dir} is a maxent model (model.family = \"maxent\"), which has no "
                          f"Hugging Face format")
    causal = isinstance(model, GPT)
    source = tokenizer_source(Path(run_dir))
    tokens = _special_tokens(tokenizer_path, source, causal)
    try:
        hf = to_hf(model.float().eval())
    except (ValueError, RuntimeError, KeyError) as e:
        raise FastlmError(f"export: {run_dir} cannot be written as a Hugging Face model: {e}") from None
    if causal:
        ids = _token_ids(tokenizer_path, tokens, source)
        for key, value in ids.items():
            setattr(hf.config, key, value)
        hf.generation_config = transformers.GenerationConfig(**ids)

    # Written next to `out` and renamed into place: a failed export leaves no half-written directory.
    partial = out.resolve().with_name(f".{out.resolve().name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        if config.checkpoint.encrypt:
            _save_encrypted(hf, partial, config.checkpoint, causal)
        else:
            hf.save_pretrained(str(partial))
        shutil.copyfile(tokenizer_path, partial / "tokenizer.json")
        _write_tokenizer_files(partial, tokens, source, _max_seq_len(model), causal)
        if out.is_dir():  # an existing empty directory (maybe the cwd, which cannot be replaced)
            for f in partial.iterdir():
                os.replace(f, out / f.name)
        else:
            os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def _save_encrypted(hf, directory: Path, checkpoint, causal: bool) -> None:
    """What save_pretrained writes (config, generation config, the weights without tied copies), with
    the weights serialized in memory and encrypted."""
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    from fastlm.privacy.encryption import encryption_for
    from fastlm.train.weight_files import save_tensors_file

    directory.mkdir(parents=True)
    hf.config.save_pretrained(str(directory))
    if causal:
        hf.generation_config.save_pretrained(str(directory))
    state = remove_tied_weights_from_state_dict(hf.state_dict(), hf)
    save_tensors_file({k: v.contiguous() for k, v in state.items()}, directory / "model.safetensors",
                      encryption_for(directory, checkpoint, create_id=True), "model.safetensors", {"format": "pt"})


def tokenizer_source(run_dir: Path, max_depth: int = 8) -> Path | None:
    """The Hugging Face checkpoint directory whose tokenizer the run used, if any.

    Read from the run directory's files: its config.toml's model.init_from, when that directory
    still exists and holds the same tokenizer.json (a data.tokenizer override breaks the link).
    A fastlm run there is followed to where it started."""
    from fastlm.models import is_hf_checkpoint

    tokenizer = (run_dir / "tokenizer.json").read_bytes()
    for _ in range(max_depth):
        try:
            init_from = tomllib.loads((run_dir / "config.toml").read_text()).get("model", {}).get("init_from")
        except (OSError, tomllib.TOMLDecodeError):
            return None
        if not init_from:
            return None
        run_dir = Path(init_from)
        try:
            if (run_dir / "tokenizer.json").read_bytes() != tokenizer:
                return None
        except OSError:
            return None
        if is_hf_checkpoint(run_dir):
            return run_dir
    return None


def _special_tokens(tokenizer_path: Path, source: Path | None, causal: bool) -> dict[str, str]:
    """{"eos_token": "...", ...}: the source's own (tokenizer_config.json), else found in the tokenizer."""
    from fastlm.data.tokenizer import load_tokenizer, special_tokens

    config = _read_json(source / "tokenizer_config.json") if source is not None else None
    if config is not None:
        found = {k: _content(v) for k, v in config.items() if k.endswith("_token") and _content(v)}
        if found.get("eos_token") or not causal:
            return found
    try:
        return special_tokens(load_tokenizer(tokenizer_path), encoder=not causal, where=str(tokenizer_path))
    except ValueError as e:
        raise FastlmError(f"export: {e}") from None


def _token_ids(tokenizer_path: Path, tokens: dict[str, str], source: Path | None) -> dict:
    """bos/eos/pad ids: those of the source's config.json where it has them, else the tokens' ids."""
    from fastlm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    ids = {f"{name}_id": tok.token_to_id(tokens[name]) for name in ("bos_token", "eos_token", "pad_token")
           if name in tokens}
    hf_config = _read_json(source / "config.json") if source is not None else None
    for key in ID_KEYS:
        if hf_config is not None and hf_config.get(key) is not None:
            ids[key] = hf_config[key]  # e.g. a list of eos ids (chat models)
    return {k: v for k, v in ids.items() if v is not None}


def _write_tokenizer_files(out: Path, tokens: dict[str, str], source: Path | None, model_max_length: int,
                           causal: bool) -> None:
    """The source's tokenizer/generation files as they are; what it lacks, written from `tokens`."""
    for name in SOURCE_FILES:
        if source is not None and (source / name).is_file():
            shutil.copyfile(source / name, out / name)  # over the generation_config.json just saved
    if not (out / "tokenizer_config.json").is_file():
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **tokens, "model_max_length": model_max_length}
        if causal:  # batched generate() continues each prompt from its end
            config["padding_side"] = "left"
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    if not (out / "special_tokens_map.json").is_file():
        (out / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2) + "\n")


def _max_seq_len(model) -> int:
    config = getattr(model, "config", None) or model.encoder.config
    return config.max_seq_len


def _content(token) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or {"content": ...} (AddedToken)."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) and token else None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
