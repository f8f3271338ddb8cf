"""Run directories: loading finished ones, building a config's model, and [model] init_from.

A run directory holds config.toml (the resolved config), tokenizer.json, model.safetensors,
metrics.jsonl and checkpoints/.
"""
from __future__ import annotations

from pathlib import Path

from fastlm.models import GPT, RECURRENT_FAMILIES, MaxEntConfig, MaxEntLM, RecurrentLM
from fastlm.privacy.encryption import encryption_for
from fastlm.train.config import Config, load_saved_config
from fastlm.train.errors import CheckpointError, ConfigError
from fastlm.train.lora import apply_run_lora
from fastlm.train.weights import load_weights


def load_run(run_dir: str | Path, device="cpu", sparse: bool = False) -> tuple[Config, GPT, Path]:
    """(config, model with the final weights, tokenizer.json path) of a finished run. sparse=True (eval,
    generate): a 2:4-pruned run on the CPU gets compressed Sparse24Linear layers for inference."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    _refuse_fitted(run_dir)
    for name in ("config.toml", "model.safetensors", "tokenizer.json"):
        if not (run_dir / name).is_file() and not (name == "model.safetensors" and _sharded_weights(run_dir)):
            raise CheckpointError(f"{run_dir} is not a finished fastlm run: {name} is missing")
    config, model = _run_model(run_dir, device)
    if config.model.linear == "int8_train" and not (run_dir / "quantization.json").is_file():
        # Evaluate as it trained: int8 (SwitchBack) linears.
        from fastlm.quant import apply_int8_training

        apply_int8_training(model)
    if sparse:
        _sparse_for_inference(run_dir, model)
    return config, model, run_dir / "tokenizer.json"


def _sparse_for_inference(run_dir: Path, model) -> None:
    """A run pruned with an N:M pattern whose masks are 2:4: its linears compressed (CPU only)."""
    from fastlm.prune import apply_sparse24, read_pruning

    pruned = read_pruning(run_dir)
    if pruned is not None and pruned[0]["pattern"] == "2:4" and next(model.parameters()).device.type == "cpu":
        apply_sparse24(model, pruned[1])


def init_model_from(directory: str | Path, encrypt: bool = False) -> tuple[GPT, Path | None]:
    """[model] init_from: (model, its tokenizer.json or None) from a fastlm run or an HF checkpoint.
    encrypt: the new run's checkpoint.encrypt (an encrypted run's weights go only into another one)."""
    from fastlm.models import is_hf_checkpoint, load_hf_checkpoint

    path = Path(directory)
    if not path.is_dir():
        raise ConfigError(f"model.init_from = {str(directory)!r}: expected an existing directory")
    tokenizer = path / "tokenizer.json"
    tokenizer = tokenizer if tokenizer.is_file() else None
    if (path / "config.toml").is_file() and (path / "model.safetensors").is_file():
        if (path / "quantization.json").is_file():
            raise ConfigError(f"model.init_from = {str(directory)!r}: a quantized run (int8 weights) cannot "
                              f"be trained; start from the run it was quantized from")
        config, model = _run_model(path)
        if config.model.lora is not None:  # a LoRA run continues as the model it computes
            from fastlm.nn.lora import merge_lora

            merge_lora(model)
        _attach_pruning(path, model)
        if config.checkpoint.encrypt and not encrypt:
            raise ConfigError(f"model.init_from = {str(directory)!r} is an encrypted run: set checkpoint.encrypt = "
                              f"true for this run too (its weights are not written in plaintext)")
        return model, tokenizer
    if is_hf_checkpoint(path):
        try:
            return load_hf_checkpoint(path), tokenizer
        except (ValueError, KeyError, OSError, RuntimeError) as e:
            raise CheckpointError(f"model.init_from = {str(directory)!r}: cannot load the Hugging Face "
                                  f"checkpoint: {_first_line(e)}") from None
    raise ConfigError(f"model.init_from = {str(directory)!r}: expected a fastlm run directory "
                      f"(config.toml + model.safetensors) or a Hugging Face checkpoint (config.json + safetensors)")


def _attach_pruning(run_dir: Path, model) -> None:
    """A pruned run (`fastlm prune`) trains on with its masks: fastlm.prune.mask_keeper keeps them."""
    from fastlm.prune import attach_masks, read_pruning

    pruned = read_pruning(run_dir)
    if pruned is not None:
        attach_masks(model, pruned[1])


def _run_model(run_dir: Path, device="cpu") -> tuple[Config, GPT]:
    from fastlm.quant.saved import read_quantization, restore_quantized

    _refuse_fitted(run_dir)
    config = load_saved_config(run_dir / "config.toml")
    model = build_model(config)
    apply_run_lora(model, config.model.lora)  # a LoRA run's weights hold its adapters
    quantization = read_quantization(run_dir)  # `fastlm quantize` output: int8 modules first
    if quantization is not None:
        restore_quantized(model, quantization)
    sharded = None if (run_dir / "model.safetensors").is_file() else _sharded_weights(run_dir)
    if sharded is not None:  # an unfinished tensor-parallel run: its latest (sharded) checkpoint, resharded
        from fastlm.parallel.tensor.checkpoint import load_sharded

        load_sharded(sharded, model.to(device))
    else:
        load_weights(model, run_dir, device, enc=encryption_for(run_dir, config.checkpoint))
        model.to(device)
    return config, model


def _refuse_fitted(run_dir: Path) -> None:
    """An n-gram or HMM run has no Transformer weights (fastlm.train.statistical loads it)."""
    from fastlm.train.statistical import fitted_family_of

    family = fitted_family_of(run_dir)
    if family is not None:
        raise CheckpointError(f"{run_dir} holds a model.family = \"{family}\" model (fitted by statistics): "
                              f"only fastlm eval and fastlm generate work on it")


def _sharded_weights(run_dir: Path) -> Path | None:
    """The weights of the latest checkpoint when it is a tensor-parallel (sharded) one."""
    from fastlm.train.checkpoint import latest_checkpoint
    from fastlm.train.sharded_checkpoint import DCP_DIR, is_sharded_checkpoint

    ckpt = latest_checkpoint(run_dir)
    return ckpt / DCP_DIR if ckpt is not None and is_sharded_checkpoint(ckpt) else None


def build_model(config: Config):
    """The model of a config: GPT, EncoderForMaskedLM for the encoder families (bert, roberta, albert),
    MaxEntLM for maxent, RecurrentLM for rnn, lstm, gru."""
    if config.model.family == "vit":
        raise ConfigError("model.family = \"vit\": a vision encoder is trained on images by `fastlm finetune "
                          "image_classification`, not on text by `fastlm train`")
    if config.model.is_encoder:
        from fastlm.models import EncoderForMaskedLM

        return EncoderForMaskedLM(config.model.architecture(), sentence_order=config.data.sentence_order)
    architecture = config.model.architecture()
    if isinstance(architecture, MaxEntConfig):
        return MaxEntLM(architecture)
    if config.model.family in RECURRENT_FAMILIES:
        return RecurrentLM(architecture, stateful=config.data.stateful)
    return GPT(architecture)


def masked_lm_model(model, sentence_order: bool = False):
    """An EncoderForMaskedLM from a loaded encoder: as it is when it has the heads asked for, else
    its encoder weights under fresh heads (a bare BertModel checkpoint has no MLM head)."""
    from fastlm.models import Encoder, EncoderForMaskedLM

    if isinstance(model, EncoderForMaskedLM) and (model.sop_head is not None) == sentence_order:
        return model
    if not isinstance(model, (Encoder, EncoderForMaskedLM)):
        raise ConfigError(f"model.family = {model.config.family!r} in model.init_from: expected an encoder "
                          f"(bert, roberta, albert) for masked-LM pretraining")
    encoder = model.encoder if isinstance(model, EncoderForMaskedLM) else model
    out = EncoderForMaskedLM(encoder.config, sentence_order=sentence_order)
    weights = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.") or sentence_order}
    out.encoder.load_state_dict(weights, strict=False)  # copies in place: the decoder stays tied
    if isinstance(model, EncoderForMaskedLM):
        out.mlm_head.load_state_dict(model.mlm_head.state_dict())
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
