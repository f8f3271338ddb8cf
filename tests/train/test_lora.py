"""LoRA runs: `[model] lora` in fastlm train (model.init_from), the adapter files in PEFT's layout (PEFT loads
them onto the exported base: same logits), and `fastlm merge` (merged == unmerged)."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import safetensors.torch
import torch

from fastlm.models import GPT, EncoderConfig, EncoderForMaskedLM, GPTConfig, to_hf
from fastlm.nn.lora import apply_lora, lora_layers
from fastlm.train import Trainer
from fastlm.train.errors import ConfigError
from fastlm.train.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoRASection, save_adapter
from fastlm.train.run import load_run
from tests.train.train_helpers import micro_config

peft = pytest.importorskip("peft")
LORA = "model.lora={rank = 4, alpha = 8.0, targets = [\"attn\", \"mlp\"]}"


def _peft_model(hf_base, adapter_dir, tmp_path):
    """PEFT's own loader on a directory holding the adapter under PEFT's file names."""
    d = tmp_path / "peft"
    d.mkdir()
    shutil.copyfile(adapter_dir / ADAPTER_WEIGHTS, d / "adapter_model.safetensors")
    shutil.copyfile(adapter_dir / ADAPTER_CONFIG, d / "adapter_config.json")
    return peft.PeftModel.from_pretrained(hf_base, str(d)).eval()


def _randomize(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.2)


@pytest.mark.parametrize("family,targets", [("gpt2", ("attn", "mlp")), ("llama", ("attn", "mlp")),
                                            ("llama", ("mlp",)), ("bert", ("attn", "mlp")),
                                            ("roberta", ("attn",))])
def test_peft_loads_the_adapter_onto_the_exported_base(tmp_path, family, targets):
    torch.manual_seed(0)
    if family in ("gpt2", "llama"):
        model = GPT(GPTConfig(family=family, vocab_size=64, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else None,
                              d_model=32, max_seq_len=16, dropout=0.0))
        ids = torch.randint(0, 64, (2, 9))
    else:
        model = EncoderForMaskedLM(EncoderConfig(family=family, vocab_size=64, n_layer=2, n_head=2, d_model=16,
                                                 max_seq_len=16, dropout=0.0))
        ids = torch.randint(5, 64, (2, 9))
    model.eval()
    base_hf = to_hf(copy.deepcopy(model)).eval()
    lora = LoRASection(rank=3, alpha=6.0, targets=list(targets))
    apply_lora(model, lora.rank, lora.alpha, targets=targets)
    _randomize(model)
    assert save_adapter(model, model.config, lora, tmp_path)
    config = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert config["r"] == 3 and config["lora_alpha"] == 6.0 and config["peft_type"] == "LORA"
    with torch.no_grad():
        want = model(ids)
        got = _peft_model(base_hf, tmp_path, tmp_path)(input_ids=ids).logits
    assert not torch.allclose(want, to_hf(copy.deepcopy(model)).eval()(input_ids=ids).logits, atol=1e-3)  # adapters matter
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, finished_run):
    base, _ = finished_run
    out = tmp_path_factory.mktemp("lora") / "run"
    Trainer(micro_config(f"model.init_from={json.dumps(str(base))}", LORA), out_dir=out, show_progress=False).fit()
    return base, out


def test_a_lora_run_trains_only_the_adapters(lora_run):
    base, run = lora_run
    a = safetensors.torch.load_file(base / "model.safetensors")
    b = safetensors.torch.load_file(run / "model.safetensors")
    adapters = {k for k in b if ".lora_" in k}
    assert len(adapters) == 2 * 4 * 2  # 2 layers x 4 linears x (A, B)
    assert set(b) - adapters == set(a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)  # the base is frozen
    assert all(b[k].abs().sum() > 0 for k in adapters if k.endswith("lora_B"))  # B left zero: it trained
    config, model, _ = load_run(run)
    assert config.model.lora == LoRASection(rank=4, alpha=8.0)
    from fastlm.cli import main
    from fastlm.train.evaluate import evaluate_run
    from fastlm.train.metrics import read_metrics

    assert main(["eval", str(run)]) == 0  # eval reads a LoRA run as it trained
    last = [r for r in read_metrics(run) if "val_loss" in r][-1]
    assert evaluate_run(run)["val_loss"] == pytest.approx(last["val_loss"], rel=1e-5)
    assert set(lora_layers(model)) and (run / ADAPTER_WEIGHTS).is_file() and (run / ADAPTER_CONFIG).is_file()


def test_peft_on_the_exported_base_run_equals_the_lora_run(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from fastlm.train.export import export_run

    base, run = lora_run
    export_run(base, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    _, model, _ = load_run(run)
    ids = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(_peft_model(hf, run, tmp_path)(input_ids=ids).logits, model.eval()(ids),
                                   rtol=1e-4, atol=1e-4)


def test_merge_folds_the_adapters_into_a_plain_run(lora_run, tmp_path):
    from fastlm.cli import main

    _, run = lora_run
    out = tmp_path / "merged"
    assert main(["merge", str(run), "--out", str(out)]) == 0
    config, merged, _ = load_run(out)
    assert config.model.lora is None and not lora_layers(merged)
    assert not (out / ADAPTER_WEIGHTS).exists() and not (out / "checkpoints").exists()
    _, model, _ = load_run(run)
    ids = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(ids), model.eval()(ids), rtol=1e-5, atol=1e-5)
    assert main(["merge", str(out), "--out", str(tmp_path / "again")]) != 0  # no adapters: a one-line error


def test_a_lora_run_as_init_from_continues_merged(lora_run):
    from fastlm.train.run import init_model_from

    _, run = lora_run
    model, _ = init_model_from(run)
    _, lora_model, _ = load_run(run)
    assert not lora_layers(model)
    ids = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids), lora_model.eval()(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("extra,match", [
    (["model.lora={base = \"int4\"}"], "base"),
    (["model.linear=\"int8_train\""], "model.linear"),
    (["model.lora={alpha = 0}"], "model.lora.alpha"), (["model.lora={dropout = 1.0}"], "model.lora.dropout"),
])
def test_config_errors(extra, match):
    with pytest.raises(ConfigError, match=match):
        micro_config(LORA, *extra)


def test_an_int8_base_run_loads_and_merges(finished_run, tmp_path):
    from fastlm.cli import main
    from fastlm.nn.lora import Int8LoRALinear

    base, _ = finished_run
    run = tmp_path / "int8"
    lora = "model.lora={rank = 4, alpha = 8.0, base = \"int8\"}"
    Trainer(micro_config(f"model.init_from={json.dumps(str(base))}", lora, "train.steps=3", "checkpoint.every=0",
                         "train.eval_every=0"), out_dir=run, show_progress=False).fit()
    saved = safetensors.torch.load_file(run / "model.safetensors")
    assert saved["blocks.0.attn.qkv.weight"].dtype == torch.int8 and "blocks.0.attn.qkv.weight_scale" in saved
    config, model, _ = load_run(run)
    assert config.model.lora.base == "int8"
    assert all(isinstance(m, Int8LoRALinear) for m in lora_layers(model).values())
    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    _, merged, _ = load_run(tmp_path / "merged")
    ids = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(ids), model.eval()(ids), rtol=1e-4, atol=1e-4)


def test_export_and_quantize_refuse_a_lora_run(lora_run, tmp_path):
    from fastlm.train.errors import FastlmError
    from fastlm.train.export import export_run
    from fastlm.train.quantize import quantize_run

    _, run = lora_run
    with pytest.raises(FastlmError, match="fastlm merge"):
        export_run(run, tmp_path / "hf")
    with pytest.raises(FastlmError, match="fastlm merge"):
        quantize_run(run, tmp_path / "q", "w8a16")
