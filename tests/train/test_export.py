"""`fastlm export --format hf`: the special tokens and generation setup that make an exported
model stop at end-of-text, from fastlm's own tokenizer or from the Hugging Face checkpoint a run
started from (model.init_from)."""
from __future__ import annotations

import json

import pytest
import torch

from fastlm.cli import main
from fastlm.data.tokenizer import find_eos_id, load_tokenizer
from fastlm.train import Trainer
from fastlm.train.export import tokenizer_source
from fastlm.train.run import load_run
from tests.train.train_helpers import micro_config

transformers = pytest.importorskip("transformers")

CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
FILES = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json"}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny LLaMA checkpoint with its own tokenizer (<unk>=0, <s>=1, </s>=2) and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    d = tmp_path_factory.mktemp("hf-llama")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["def main(): return the value of the thing"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                         chat_template=CHAT_TEMPLATE).save_pretrained(d)
    cfg = transformers.LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    return d


class EosAfter(transformers.LogitsProcessor):
    """Makes eos the only choice once `n` tokens are generated: generate() must stop right there."""

    def __init__(self, prompt_len: int, n: int, eos_id: int):
        self.at, self.eos_id = prompt_len + n, eos_id

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] >= self.at:
            scores = torch.full_like(scores, -float("inf"))
            scores[:, self.eos_id] = 0.0
        return scores


def export(run_dir, out) -> tuple:
    assert main(["export", str(run_dir), "--format", "hf", "--out", str(out)]) == 0
    assert FILES <= {p.name for p in out.iterdir()}
    assert not list(out.parent.glob(f".{out.name}.partial"))
    return (transformers.AutoTokenizer.from_pretrained(str(out)),
            transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval())


def assert_generate_stops_at_eos(tok, hf, eos_id: int):
    prompt = tok("def main", return_tensors="pt").input_ids
    n = prompt.shape[1]
    with torch.no_grad():
        ids = hf.generate(prompt, max_new_tokens=12, do_sample=False,
                          logits_processor=transformers.LogitsProcessorList([EosAfter(n, 3, eos_id)]))
    assert ids.shape[1] == n + 4 and ids[0, -1].item() == eos_id, ids  # 3 tokens, eos, and no more


def test_export_of_a_run_with_fastlms_tokenizer(finished_run, tmp_path):
    run_dir, _ = finished_run
    (tmp_path / "hf").mkdir()  # an existing empty directory is filled
    tok, hf = export(run_dir, tmp_path / "hf")
    eos_id = find_eos_id(load_tokenizer(run_dir / "tokenizer.json"))
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == eos_id
    assert tok.bos_token_id == tok.pad_token_id == eos_id  # GPT-2's convention: one end-of-text token
    assert hf.config.eos_token_id == hf.config.bos_token_id == hf.config.pad_token_id == eos_id
    assert hf.generation_config.eos_token_id == eos_id and hf.generation_config.pad_token_id == eos_id
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and tok.padding_side == "left"
    assert config["model_max_length"] == load_run(run_dir)[1].config.max_seq_len
    assert tok.chat_template is None
    assert tok.decode(tok("def main").input_ids) == "def main"
    assert_generate_stops_at_eos(tok, hf, eos_id)


def test_export_of_a_run_from_a_hugging_face_checkpoint(hf_dir, tmp_path):
    run_dir = tmp_path / "from-hf"
    config = micro_config(f"model.init_from={json.dumps(str(hf_dir))}", "train.steps=1", "checkpoint.every=0")
    Trainer(config, out_dir=run_dir, show_progress=False).fit()
    assert tokenizer_source(run_dir) == hf_dir
    out = tmp_path / "hf"
    tok, hf = export(run_dir, out)
    # The checkpoint's own files and ids, not invented ones.
    assert (out / "tokenizer_config.json").read_bytes() == (hf_dir / "tokenizer_config.json").read_bytes()
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert (hf.config.bos_token_id, hf.config.eos_token_id) == (1, 2)
    assert hf.generation_config.eos_token_id == 2
    assert tok.chat_template == CHAT_TEMPLATE
    assert json.loads((out / "special_tokens_map.json").read_text())["eos_token"] == "</s>"
    assert_generate_stops_at_eos(tok, hf, 2)


def test_tokenizer_source_needs_the_same_tokenizer(hf_dir, tmp_path):
    """A run whose tokenizer is not the checkpoint's (data.tokenizer), or whose source is gone, has none."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(f"[model]\ninit_from = {json.dumps(str(hf_dir))}\n")
    (run / "tokenizer.json").write_bytes((hf_dir / "tokenizer.json").read_bytes())
    assert tokenizer_source(run) == hf_dir
    (run / "tokenizer.json").write_text("{}")
    assert tokenizer_source(run) is None
    (run / "config.toml").write_text(f"[model]\ninit_from = {json.dumps(str(tmp_path / 'gone'))}\n")
    assert tokenizer_source(run) is None
    # followed through a run started from a run started from the checkpoint
    (run / "tokenizer.json").write_bytes((hf_dir / "tokenizer.json").read_bytes())
    child = tmp_path / "child"
    child.mkdir()
    (child / "config.toml").write_text(f"[model]\ninit_from = {json.dumps(str(run))}\n")
    (child / "tokenizer.json").write_bytes((hf_dir / "tokenizer.json").read_bytes())
    (run / "config.toml").write_text(f"[model]\ninit_from = {json.dumps(str(hf_dir))}\n")
    assert tokenizer_source(child) == hf_dir


def test_a_run_from_a_checkpoint_records_what_it_used(hf_dir, tmp_path, monkeypatch):
    """config.toml records the checkpoint's architecture and tokenizer (file and vocabulary), the
    user's config is left as it was, and `fastlm eval` trains no throwaway tokenizer."""
    import tomllib

    from fastlm.data import prepare
    from fastlm.train.evaluate import evaluate_run

    run_dir = tmp_path / "from-hf"
    config = micro_config(f"model.init_from={json.dumps(str(hf_dir))}", "train.steps=1", "checkpoint.every=0")
    before = config.to_dict()
    Trainer(config, out_dir=run_dir, show_progress=False).fit()
    assert config.to_dict() == before                               # the run wrote into a copy
    recorded = tomllib.loads((run_dir / "config.toml").read_text())
    tok = load_tokenizer(hf_dir / "tokenizer.json")
    assert recorded["data"]["tokenizer"] == str((hf_dir / "tokenizer.json").resolve())
    assert recorded["data"]["vocab_size"] == tok.get_vocab_size()
    hf_config = json.loads((hf_dir / "config.json").read_text())
    assert recorded["model"]["family"] == "llama" and recorded["model"]["n_layer"] == hf_config["num_hidden_layers"]

    def no_training(*args, **kwargs):
        raise AssertionError("fastlm eval trained a tokenizer")
    monkeypatch.setattr(prepare, "train_bpe", no_training)
    result = evaluate_run(run_dir)
    assert result["val_loss"] > 0
