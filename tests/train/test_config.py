"""Config loading: presets, TOML files, --set overrides, and one-line errors naming the key."""
from __future__ import annotations

import math

import pytest
import tomllib

from fastlm.models import GPT, EncoderConfig, GPTConfig
from fastlm.train import ConfigError, load_config, preset_names
from fastlm.train.config import dumps_toml, parse_value, with_model_architecture
from fastlm.train.model_section import MODEL_SECTIONS, ModelSection, register_model_section
from fastlm.train.optim import build_optimizer, lr_at


def test_presets_load_and_have_the_promised_shapes():
    assert {"tiny", "gpt2-small", "llama-1b"} <= set(preset_names())
    tiny = load_config("tiny")
    m = tiny.model
    assert (m.family, m.dropout, tiny.train.log_every) == ("llama", 0.0, 1)
    assert m.n_layer >= 4
    # divisible by 2 and 4 so later issues can split it over 1..8 processes
    for value in (m.n_layer, m.n_head, m.n_kv_head, m.vocab_size, tiny.data.vocab_size):
        assert value % 4 == 0, value
    assert tiny.model.vocab_size == tiny.data.vocab_size and tiny.model.max_seq_len == tiny.data.seq_len

    # parameter counts from the real model class, built on the meta device (no memory)
    import torch
    with torch.device("meta"):
        small = GPT(load_config("gpt2-small").model.architecture())
        big = GPT(load_config("llama-1b").model.architecture())
    assert small.family == "gpt2" and 120e6 < small.num_params() < 130e6
    assert big.family == "llama" and 0.9e9 < big.num_params() < 1.3e9


def test_overrides_are_toml_values_or_strings():
    c = load_config("tiny", ["train.steps=7", "train.lr=1e-3", "train.precision=fp32",
                             'train.precision="bf16"', "train.activation_checkpointing=true",
                             "data.builtin_modules=['abc', 'ast']", "data.source=/some/file.txt"])
    assert c.train.steps == 7 and c.train.lr == 1e-3
    assert c.train.precision == "bf16"  # the later --set wins
    assert c.train.activation_checkpointing is True
    assert c.data.builtin_modules == ["abc", "ast"]
    assert c.data.source == "/some/file.txt"
    assert parse_value("3") == 3 and parse_value("3.0") == 3.0 and parse_value("fp32") == "fp32"
    assert parse_value("[1, 2]") == [1, 2] and parse_value("not toml [") == "not toml ["


def test_ints_widen_to_float_but_not_the_reverse():
    assert load_config("tiny", ["train.lr=1"]).train.lr == 1.0
    assert isinstance(load_config("tiny", ["train.lr=1"]).train.lr, float)
    with pytest.raises(ConfigError, match=r"train.steps = 1.5: expected an integer"):
        load_config("tiny", ["train.steps=1.5"])


def test_model_follows_data_unless_set():
    c = load_config("tiny", ["data.vocab_size=1024", "data.seq_len=64"])
    assert (c.model.vocab_size, c.model.max_seq_len) == (1024, 64)
    c = load_config("tiny", ["data.seq_len=64", "model.max_seq_len=256"])
    assert c.model.max_seq_len == 256


@pytest.mark.parametrize("override, message", [
    ("train.stpes=5", r"unknown key train.stpes \(expected one of: steps,"),
    ("bogus.steps=5", r"unknown section \[bogus\]"),
    ("train.steps=many", r'train.steps = "many": expected an integer'),
    ("train.activation_checkpointing=1", r"train.activation_checkpointing = 1: expected true or false"),
    ("train.global_batch_size=10", r"train.global_batch_size = 10: expected a multiple of train.micro_batch_size"),
    ("train.precision=fp8", r'train.precision = "fp8": expected one of auto, fp32, bf16, fp16'),
    ("train.steps=0", r"train.steps = 0: expected a positive integer"),
    ("model.n_kv_head=3", r"model.n_kv_head = 3: expected a divisor of n_head"),
    ("model.family=t5", r'model.family = "t5": expected one of gpt2, llama, bert, roberta, albert'),
    ("model.max_seq_len=64", r"data.seq_len = 128: expected at most model.max_seq_len = 64"),
    ("parallel.dp=some", r'parallel.dp = "some": expected an integer or "auto"'),
    ("parallel.tp=3", r"parallel.tp = 3 does not divide model.n_head = 8"),
    ("train.steps", r"expected section.key=value"),
])
def test_bad_values_name_key_value_and_expectation(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config("tiny", [override])
    assert "\n" not in str(info.value)


def test_batch_split_accounts_for_data_parallel_size():
    c = load_config("tiny", ["train.global_batch_size=16", "train.micro_batch_size=8"])
    assert c.dp_size() == 1
    with pytest.raises(ConfigError, match=r"8 \* 4"):
        load_config("tiny", ["train.global_batch_size=16", "train.micro_batch_size=8", "parallel.dp=4"])


def test_files_and_unknown_names(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('[train]\nsteps = 3\n[data]\nseq_len = 64\n')
    c = load_config(path)
    assert c.name == "exp" and c.train.steps == 3 and c.data.seq_len == 64
    path.write_text("[train\nsteps = 3\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"neither a TOML file nor a preset \(presets: .*tiny"):
        load_config("no-such-preset")


def test_resolved_config_round_trips_through_toml(tmp_path):
    c = load_config("tiny", ["train.lr=3e-4", "train.min_lr=1e-05", 'data.source="a \\"quoted\\" path/é"', "data.builtin_modules=['abc']"])
    text = c.to_toml()
    assert tomllib.loads(text)["train"]["min_lr"] == 1e-5
    (tmp_path / "config.toml").write_text(text)
    again = load_config(tmp_path / "config.toml")
    assert again.to_dict() == c.to_dict()
    assert dumps_toml({"s": {"x": float("inf"), "y": None, "z": [True, 1.5]}}) == "[s]\nx = inf\nz = [true, 1.5]\n"


def test_model_section_is_the_familys_own_config():
    gpt, bert = load_config("tiny").model, load_config("bert-tiny").model
    assert isinstance(gpt, GPTConfig) and not gpt.is_encoder and type(gpt.architecture()) is GPTConfig
    assert isinstance(bert, EncoderConfig) and bert.is_encoder and type(bert.architecture()) is EncoderConfig
    assert bert.vocab_size == 4096 + 3  # [MASK], [CLS], [SEP] after the tokenizer's ids
    assert "embedding_size" not in gpt.to_dict() and "n_kv_head" not in bert.to_dict()
    assert list(gpt.to_dict())[-4:] == ["init_from", "init_embeddings", "linear", "lora"]
    # --set switches the family; the keys given must be the new family's
    albert = load_config("bert-tiny", ["model.family=albert", "model.embedding_size=64"]).model
    assert (albert.family, albert.embedding_size, albert.is_encoder) == ("albert", 64, True)
    assert load_config("tiny", ["model.family=gpt2"]).model.family == "gpt2"


@pytest.mark.parametrize("preset, override, family, allowed", [
    ("tiny", "model.embedding_size=64", "llama", "n_kv_head"),
    ("bert-tiny", "model.n_kv_head=2", "bert", "embedding_size"),
    ("tiny", "model.family=bert", "bert", "n_layer_groups"),  # tiny's n_kv_head is no encoder key
])
def test_a_key_of_another_family_is_named_with_the_family(preset, override, family, allowed):
    with pytest.raises(ConfigError, match=rf'unknown key model\.\w+ for model\.family = "{family}" '
                                          rf'\(expected one of: family, .*{allowed}.*, init_from, init_embeddings, linear, lora\)') as info:
        load_config(preset, [override])
    assert "\n" not in str(info.value)


def test_encoder_config_round_trips_through_toml(tmp_path):
    c = load_config("bert-tiny", ["model.family=roberta", "model.pad_token_id=1"])
    (tmp_path / "config.toml").write_text(c.to_toml())
    again = load_config(tmp_path / "config.toml")
    assert type(again.model) is type(c.model) and again.to_dict() == c.to_dict()


def test_with_model_architecture_copies_and_keeps_the_run_keys():
    c = load_config("tiny", ["model.linear=int8_train"])
    before = c.to_dict()
    built = GPTConfig(family="gpt2", vocab_size=4096, n_layer=2, n_head=2, d_model=32).resolved()
    out = with_model_architecture(c, built)
    assert c.to_dict() == before  # the user's config is untouched
    assert out.model.architecture() == built and out.model.linear == "int8_train"
    assert out.train == c.train and out.train is not c.train
    encoder = EncoderConfig(vocab_size=4099, n_layer=1, n_head=2, d_model=32).resolved()
    switched = with_model_architecture(c, encoder)  # e.g. init_from brought an encoder
    assert switched.model.is_encoder and switched.model.architecture() == encoder and not c.model.is_encoder


def test_a_new_family_registers_its_section_with_one_call(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class ToyConfig:
        family: str = "toy"
        n_layer: int = 2
        width: int = 8

        def validate(self):
            if self.width < 1:
                raise ValueError(f"model.width = {self.width}: expected a positive integer")

    @dataclass
    class ToySection(ModelSection, ToyConfig):
        ARCHITECTURE = ToyConfig

    register_model_section(ToySection, "toy")
    try:
        path = tmp_path / "toy.toml"
        path.write_text('[model]\nfamily = "toy"\nwidth = 16\n')
        c = load_config(path)
        assert type(c.model) is ToySection and c.model.architecture() == ToyConfig(width=16)
        with pytest.raises(ConfigError, match=r'model.vocab_size for model.family = "toy" \(expected one of: '
                                              r'family, n_layer, width, init_from, init_embeddings, linear, lora\)'):
            load_config(path, ["model.vocab_size=5"])
        with pytest.raises(ConfigError, match="model.width = 0: expected a positive integer"):
            load_config(path, ["model.width=0"])
        with pytest.raises(ValueError, match="registered already"):
            register_model_section(ToySection, "toy")
    finally:
        del MODEL_SECTIONS["toy"]


def test_lr_schedule_is_warmup_then_cosine_to_min_lr():
    t = load_config("tiny", ["train.steps=100", "train.warmup_steps=10", "train.lr=1e-3", "train.min_lr=1e-4"]).train
    lrs = [lr_at(s, t) for s in range(t.steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)     # linear warmup
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))                     # then decays
    assert lrs[-1] == pytest.approx(1e-4)                                      # ... to min_lr
    mid = 10 + (99 - 10) / 2                                                   # cosine: halfway
    assert lr_at(int(mid), t) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * (int(mid) - 10) / 89)))


def test_weight_decay_only_on_matrices():
    import torch
    cfg = GPTConfig(family="gpt2", vocab_size=64, n_layer=1, n_head=2, d_model=16, max_seq_len=8)
    model = GPT(cfg)
    opt = build_optimizer(model, load_config("tiny").train, torch.device("cpu"))
    decay, no_decay = (g["params"] for g in opt.param_groups)
    assert opt.param_groups[1]["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() == 2 for p in decay)
    assert names[id(model.tok_emb.weight)] in {names[id(p)] for p in no_decay}  # tied with lm_head
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
