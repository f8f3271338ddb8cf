"""MaxEntLM (model.family = "maxent") against a per-position loop of its definition, and as a run:
`fastlm train maxent` / `eval` / `generate` on a micro run, the config checks, data parallel only."""
from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from fastlm.models import MaxEntConfig, MaxEntLM
from fastlm.models.ngram_hash import history_hashes, ngram_feature_hashes

P = 2**31 - 1  # the Mersenne prime of the documented hash


def documented_hash(ngram: list[int], buckets: int) -> int:
    """The hash as fastlm/models/ngram_hash.py documents it, written out independently."""
    h = len(ngram)
    for tok in ngram:
        h = (h * 1000003 + tok + 1) % P
    return h * 48271 % P % buckets


def naive_logits(model: MaxEntLM, ids: list[int], starts: set[int] = frozenset({0})) -> torch.Tensor:
    """(T, V) float64: bias + the theta window of every history of length 1 .. order-1 that stays
    inside the document (starts: the document start positions)."""
    cfg = model.config
    theta, bias = model.theta.detach().double(), model.bias.detach().double()
    out = torch.zeros(len(ids), cfg.vocab_size, dtype=torch.float64)
    for t in range(len(ids)):
        doc_start = max(s for s in starts if s <= t)
        for v in range(cfg.vocab_size):
            score = float(bias[v])
            for k in range(1, cfg.order):
                if t - k + 1 >= doc_start:
                    score += float(theta[(documented_hash(ids[t - k + 1:t + 1], cfg.hash_buckets) + v)
                                         % cfg.hash_buckets])
            out[t, v] = score
    return out


def small_model(order=3, vocab=23, buckets=101, seq=12) -> MaxEntLM:
    return MaxEntLM(MaxEntConfig(vocab_size=vocab, max_seq_len=seq, order=order, hash_buckets=buckets, init_std=0.5))


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_forward_is_the_definition(order):
    model = small_model(order)
    torch.nn.init.normal_(model.bias)
    ids = torch.randint(0, 23, (2, 9))
    logits = model(ids)
    assert logits.shape == (2, 9, 23)
    for row in range(2):
        torch.testing.assert_close(logits[row].double(), naive_logits(model, ids[row].tolist()), atol=1e-5, rtol=1e-5)


def test_packed_documents_do_not_see_each_other():
    model = small_model(order=4)
    ids = torch.randint(0, 23, (2, 6))
    cu = torch.tensor([0, 4, 6, 9, 12])  # documents [0:4), [4:6) in row 0; [6:9), [9:12) in row 1
    logits = model(ids, cu_seqlens=cu)
    flat = ids.flatten().tolist()
    want = naive_logits(model, flat, {0, 4, 6, 9})
    torch.testing.assert_close(logits.reshape(12, 23).double(), want, atol=1e-5, rtol=1e-5)


def test_loss_is_the_shifted_cross_entropy_and_decreases():
    torch.manual_seed(1)
    model = MaxEntLM(MaxEntConfig(vocab_size=17, max_seq_len=16, order=3, hash_buckets=4096))
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8] * 2, [3, 1, 4, 1, 5, 9, 2, 6] * 2])
    logits, loss = model(ids, labels=ids)
    assert loss.item() == pytest.approx(math.log(17), rel=1e-6)  # zero init: uniform
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 17).double(), ids[:, 1:].reshape(-1))
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    none, loss_only = model(ids, labels=ids, return_logits=False)
    assert none is None and loss_only.item() == pytest.approx(loss.item())
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.0)
    for _ in range(30):
        opt.zero_grad()
        model(ids, labels=ids, return_logits=False)[1].backward()
        opt.step()
    final = model(ids, labels=ids)[1].item()
    assert final < 0.2 * math.log(17), final  # a trigram model memorises these two sequences


def test_history_hashes_match_the_classifier_features():
    ids = torch.tensor([[5, 9, 2, 7]])
    h = history_hashes(ids, order=3, num_buckets=1000)
    assert h[0, :, 0].tolist() == ngram_feature_hashes([5, 9, 2, 7], 1000, orders=(1,))
    assert h[0, 0, 1].item() == -1 and h[0, 1:, 1].tolist() == ngram_feature_hashes([5, 9, 2, 7], 1000, orders=(2,))
    assert h[0, 3, 1].item() == documented_hash([2, 7], 1000)


def test_generate_greedy_follows_the_logits_and_is_seeded():
    model = small_model(order=3, seq=12)
    prompt = torch.tensor([[3, 4, 5]])
    out = model.generate(prompt, 4, temperature=0)
    assert out.shape == (1, 7) and torch.equal(out[:, :3], prompt)
    for t in range(3, 7):
        assert out[0, t].item() == model(out[:, :t])[0, -1].argmax().item()
    g = lambda: torch.Generator().manual_seed(7)
    assert torch.equal(model.generate(prompt, 20, top_k=5, generator=g()), model.generate(prompt, 20, top_k=5, generator=g()))
    assert model.generate(prompt, 20).shape[1] == 12  # stops at max_seq_len
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate(torch.zeros(1, 13, dtype=torch.long), 1)


@pytest.mark.parametrize("key, value, message", [
    ("hash_buckets", 10, "hash_buckets"), ("order", 0, "order"), ("init_std", -1.0, "init_std"),
    ("family", "gpt2", "family"), ("hash_buckets", 2**31, "hash_buckets"),
])
def test_config_errors_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=f"model.{message}"):
        MaxEntConfig.from_dict({"vocab_size": 20, key: value})


# ------------------------------------------------------------------ as a run

MICRO = ["model.hash_buckets=65536", "data.vocab_size=320", "data.seq_len=32", "data.builtin_modules=[]",
         "train.steps=6", "train.global_batch_size=4", "train.micro_batch_size=2", "train.warmup_steps=1",
         "train.eval_every=3", "train.eval_batches=2", "train.log_every=1"]


@pytest.fixture(scope="module")
def maxent_run(tmp_path_factory):
    from fastlm.cli import main

    out = tmp_path_factory.mktemp("maxent-runs") / "micro"
    args = ["train", "maxent", "--out", str(out), "--quiet"]
    for item in MICRO:
        args += ["--set", item]
    assert main(args) == 0
    return out


def test_train_eval_generate_a_maxent_run(maxent_run, capsys):
    from fastlm.cli import main
    from fastlm.train.metrics import read_metrics
    from fastlm.train.run import load_run

    config, model, _ = load_run(maxent_run)
    assert isinstance(model, MaxEntLM) and config.model.family == "maxent" and model.config.vocab_size == 320
    assert model.theta.abs().sum() > 0  # trained away from the zero start
    evals = [r for r in read_metrics(maxent_run) if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 3, 6]
    assert evals[0]["val_loss"] == pytest.approx(math.log(320), rel=1e-5)  # uniform at the start
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    capsys.readouterr()
    assert main(["eval", str(maxent_run)]) == 0
    m = re.search(r"val_loss (\S+)", capsys.readouterr().out)
    assert m and float(m.group(1)) == pytest.approx(evals[-1]["val_loss"], abs=1e-4)
    args = ["generate", str(maxent_run), "--prompt", "The class", "--max-new-tokens", "8", "--seed", "3"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("The class") and len(first) > len("The class")
    assert main(args) == 0 and capsys.readouterr().out == first


@pytest.mark.parametrize("key", ["parallel.tp", "parallel.pp"])
def test_model_parallelism_is_a_config_error(key):
    from fastlm.train.config import load_config
    from fastlm.train.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^{key} = 2: model.family = \"maxent\" trains with data parallelism only"):
        load_config("maxent", [f"{key}=2"])


def test_parallelize_refuses_tensor_parallel_for_maxent():
    from fastlm.parallel import parallelize
    from fastlm.train.config import load_config

    config = load_config("maxent", ["model.hash_buckets=8192"])
    mesh = SimpleNamespace(tp=2, pp=1, dp=1)
    with pytest.raises(ValueError, match=r"^parallel.tp = 2: MaxEntLM trains with data parallelism only"):
        parallelize(MaxEntLM(config.model.architecture()), mesh, config)


def test_compiles_without_graph_breaks():
    model = small_model(order=3, seq=16)
    ids = torch.randint(0, 23, (2, 16))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    _, loss = compiled(ids, labels=ids)
    loss.backward()
    grad = model.theta.grad.clone()
    model.theta.grad = None
    _, eager = model(ids, labels=ids)
    eager.backward()
    assert loss.item() == pytest.approx(eager.item(), rel=1e-6)
    torch.testing.assert_close(grad, model.theta.grad)


def test_export_of_a_maxent_run_is_a_one_line_error(maxent_run, tmp_path, capsys):
    from fastlm.cli import main

    assert main(["export", str(maxent_run), "--out", str(tmp_path / "hf")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("fastlm: error: export:") and "no Hugging Face format" in err
    assert not (tmp_path / "hf").exists()
