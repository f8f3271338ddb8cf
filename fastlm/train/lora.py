"""`[model] lora = {rank = 8, alpha = 16, dropout = 0.0, targets = ["attn", "mlp"]}`: LoRA runs.

    apply_run_lora(model, config.model.lora)            # base frozen, adapters trainable (fastlm.nn.lora)
    save_adapter(model, model_config, lora, run_dir)    # RUN_DIR/adapter.safetensors + adapter_config.json
    merge_run("runs/lora", "runs/merged")               # `fastlm merge`: adapters folded into the base

The adapter files are in Hugging Face PEFT's layout for the model `fastlm export` writes (GPT2LMHeadModel,
LlamaForCausalLM, Bert/RobertaForMaskedLM module names): PEFT loads them onto the exported base. A fused
fastlm linear (LLaMA's qkv and gate|up, BERT's qkv) is several HF linears: each gets the same A and its
rows of B, which is the same low-rank update exactly. RUN_DIR/model.safetensors keeps base and adapters
(`lora_A`/`lora_B` next to each adapted `weight`), so eval and generate read a LoRA run as it trained.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
TARGETS = ("attn", "mlp")


@dataclass
class LoRASection:
    rank: int = 8
    alpha: float = 16.0                  # the update is scaled by alpha / rank (PEFT's lora_alpha)
    dropout: float = 0.0                 # on the adapter's input only
    targets: list[str] = field(default_factory=lambda: list(TARGETS))  # "attn" (qkv, proj) and/or "mlp" (fc, proj)
    base: str = "float"                  # "int8": the frozen base held in int8 (W8A16 per-channel, QLoRA-style)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def check_lora(config) -> None:
    """One-line ConfigErrors for model.lora and what it cannot be combined with (yet)."""
    from fastlm.train.errors import ConfigError

    lora = config.model.lora
    if lora is None:
        return
    if config.model.family not in ("gpt2", "llama", "bert", "roberta", "albert"):
        raise ConfigError(f"model.lora: model.family = \"{config.model.family}\" has no Transformer blocks "
                          f"(LoRA adapts gpt2, llama, bert, roberta and albert models)")
    if lora.rank < 1:
        raise ConfigError(f"model.lora.rank = {lora.rank}: expected a positive integer")
    if not lora.alpha > 0:
        raise ConfigError(f"model.lora.alpha = {lora.alpha}: expected a positive number")
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"model.lora.dropout = {lora.dropout}: expected 0 <= dropout < 1")
    if lora.base not in ("float", "int8"):
        raise ConfigError(f"model.lora.base = \"{lora.base}\": expected \"float\" or \"int8\" (W8A16 frozen base)")
    bad = [t for t in lora.targets if t not in TARGETS]
    if bad or not lora.targets or len(set(lora.targets)) != len(lora.targets):
        raise ConfigError(f"model.lora.targets = {lora.targets}: expected a non-empty list of distinct "
                          f"{', '.join(repr(t) for t in TARGETS)}")
    for key, on, why in (("model.linear", config.model.linear != "default", "int8 training replaces the linears"),
                         ("privacy.dp_sgd", getattr(config.privacy, "dp_sgd", False),
                          "DP-SGD's per-sample gradients do not cover adapters yet")):
        if on:
            raise ConfigError(f"model.lora cannot be combined with {key} = {getattr_path(config, key)!r}: {why}")


def getattr_path(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def apply_run_lora(model, lora: LoRASection | None) -> list[str]:
    """fastlm.nn.lora.apply_lora with the section's settings (nothing when lora is None)."""
    if lora is None:
        return []
    from fastlm.nn.lora import apply_lora

    return apply_lora(model, lora.rank, lora.alpha, lora.dropout, tuple(lora.targets), base=lora.base)


# ---------------------------------------------------------------- PEFT layout

def _hf_names(family: str, index: int, layer: str, config) -> list[tuple[str, int]]:
    """[(HF module name, rows of B it takes)] of fastlm block `index`'s `layer` (attn.qkv, ...)."""
    if family == "gpt2":
        prefix = f"transformer.h.{index}."
        hf = {"attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
        return [(prefix + hf[layer], -1)]
    if family == "llama":
        c = config.resolved()
        prefix = f"model.layers.{index}."
        q, kv = c.n_head * c.head_dim, c.n_kv_head * c.head_dim
        return {"attn.qkv": [(prefix + "self_attn.q_proj", q), (prefix + "self_attn.k_proj", kv),
                             (prefix + "self_attn.v_proj", kv)],
                "attn.proj": [(prefix + "self_attn.o_proj", -1)],
                "mlp.fc": [(prefix + "mlp.gate_proj", c.d_ff), (prefix + "mlp.up_proj", c.d_ff)],
                "mlp.proj": [(prefix + "mlp.down_proj", -1)]}[layer]
    if family in ("bert", "roberta"):
        prefix = f"{family}.encoder.layer.{index}."
        d = config.d_model
        return {"attn.qkv": [(prefix + f"attention.self.{n}", d) for n in ("query", "key", "value")],
                "attn.proj": [(prefix + "attention.output.dense", -1)],
                "mlp.fc": [(prefix + "intermediate.dense", -1)],
                "mlp.proj": [(prefix + "output.dense", -1)]}[layer]
    raise ValueError(f"no Hugging Face PEFT layout for model.family = \"{family}\"")


def peft_state_dict(model, model_config) -> dict:
    """The model's adapters under PEFT's keys (base_model.model.<HF module>.lora_A.weight / lora_B.weight)."""
    from fastlm.nn.lora import _BLOCK_LINEAR, lora_layers

    out = {}
    for name, layer in lora_layers(model).items():
        m = _BLOCK_LINEAR.search(name)
        rows = 0
        for hf_name, n in _hf_names(model_config.family, int(m.group(1)), m.group(2), model_config):
            n = layer.out_features - rows if n < 0 else n
            key = f"base_model.model.{hf_name}"
            out[f"{key}.lora_A.weight"] = layer.lora_A.detach().float().cpu().clone()  # one copy per HF module
            out[f"{key}.lora_B.weight"] = layer.lora_B.detach()[rows:rows + n].float().cpu().clone()
            rows += n
        if rows != layer.out_features:
            raise ValueError(f"{name}: {rows} rows mapped to Hugging Face modules, expected {layer.out_features}")
    return out


def peft_config(model_config, lora: LoRASection, modules: list[str], base: str | None) -> dict:
    causal = model_config.family in ("gpt2", "llama")
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM" if causal else None,
        "base_model_name_or_path": base, "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
        # An exact list of the adapted modules (a regex PEFT fullmatches): BERT's "output.dense" names two layers.
        "target_modules": "^(?:" + "|".join(re.escape(m) for m in sorted(modules)) + ")$",
        "bias": "none", "fan_in_fan_out": model_config.family == "gpt2",  # GPT-2's Conv1D stores W transposed
        "inference_mode": True, "init_lora_weights": True, "use_rslora": False, "modules_to_save": None,
    }


def save_adapter(model, model_config, lora: LoRASection, run_dir: str | Path, base: str | None = None) -> bool:
    """Write RUN_DIR/adapter.safetensors + adapter_config.json (temporary names, then renamed).
    False (nothing written) for a family without a PEFT layout (albert)."""
    from safetensors.torch import save_file

    if model_config.family not in ("gpt2", "llama", "bert", "roberta"):
        return False
    run_dir = Path(run_dir)
    state = peft_state_dict(model, model_config)
    modules = [k[len("base_model.model."):-len(".lora_A.weight")] for k in state if k.endswith(".lora_A.weight")]
    config = peft_config(model_config, lora, modules, base)
    tmp_w, tmp_c = run_dir / f".{ADAPTER_WEIGHTS}.tmp-{os.getpid()}", run_dir / f".{ADAPTER_CONFIG}.tmp-{os.getpid()}"
    try:
        save_file(state, str(tmp_w), metadata={"format": "pt"})
        tmp_c.write_text(json.dumps(config, indent=2) + "\n")
        os.replace(tmp_w, run_dir / ADAPTER_WEIGHTS)
        os.replace(tmp_c, run_dir / ADAPTER_CONFIG)
    finally:
        tmp_w.unlink(missing_ok=True)
        tmp_c.unlink(missing_ok=True)
    return True


# ---------------------------------------------------------------- fastlm merge

def merge_run(run_dir: str | Path, out: str | Path) -> Path:
    """A copy of a LoRA run (language-model or task run) with the adapters folded into the base weights
    and model.lora removed from its config.toml: a plain run that eval, generate, export and init_from read."""
    import tomllib

    from fastlm.nn.lora import merge_state_dict
    from fastlm.train.errors import FastlmError
    from fastlm.train.toml_text import dumps_toml
    from safetensors.torch import load_file

    from fastlm.train.checkpoint import describe_file
    from fastlm.train.weight_files import save_tensors_file
    from fastlm.train.weights import SEAL, WEIGHTS

    run_dir, out = Path(run_dir), Path(out)
    for name in ("config.toml", WEIGHTS):
        if not (run_dir / name).is_file():
            raise FastlmError(f"merge: {run_dir} is not a finished fastlm run: {name} is missing")
    raw = tomllib.loads((run_dir / "config.toml").read_text())
    lora = raw.get("model", {}).get("lora")
    if not lora:
        raise FastlmError(f"merge: {run_dir} has no LoRA adapters (its config.toml sets no model.lora)")
    if raw.get("checkpoint", {}).get("encrypt"):
        raise FastlmError(f"merge: {run_dir} is encrypted; merging encrypted runs is not supported yet")
    if out.exists():
        raise FastlmError(f"merge: {out} already exists")
    scale = float(lora.get("alpha", LoRASection.alpha)) / int(lora.get("rank", LoRASection.rank))
    state = merge_state_dict(load_file(str(run_dir / WEIGHTS)), scale)
    del raw["model"]["lora"]
    partial = out.resolve().with_name(f".{out.resolve().name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        skip = {WEIGHTS, SEAL, "config.toml", ADAPTER_WEIGHTS, ADAPTER_CONFIG, "checkpoints"}
        for f in run_dir.iterdir():
            if f.name not in skip and not f.name.startswith("."):
                (shutil.copytree if f.is_dir() else shutil.copyfile)(f, partial / f.name)
        (partial / "config.toml").write_text(dumps_toml(raw))
        save_tensors_file(state, partial / WEIGHTS, None, WEIGHTS, {"format": "pt"})
        (partial / SEAL).write_text(json.dumps({"files": {WEIGHTS: describe_file(partial / WEIGHTS)}}, indent=1))
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out
