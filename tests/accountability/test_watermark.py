"""Watermarked generation: the keyed hash against a plain-Python reference, green fractions, the bias
in the sampling step, z-scores against scipy, and detection end to end (API and CLI)."""
from __future__ import annotations

import base64
import math
import random

import pytest
import torch

from fastlm.accountability.watermark import WatermarkKey, p_value, z_score
from fastlm.cli import main

SECRET = bytes(range(32))


def _mix_reference(x: int) -> int:
    """lowbias32 (Wellons) on Python integers: the oracle for the int64 tensor version."""
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x735A2D97) & 0xFFFFFFFF
    x ^= x >> 15
    return x


def _green_reference(key: WatermarkKey, prev: int, token: int) -> bool:
    k = key._words()
    seed = _mix_reference(_mix_reference(prev ^ k[0]) ^ k[1])
    code = _mix_reference(_mix_reference(token ^ k[2]) ^ k[3])
    return _mix_reference(seed ^ code) < round(key.gamma * 2**32)


def test_green_lists_match_a_plain_python_hash():
    key = WatermarkKey(SECRET)
    rng = random.Random(0)
    prev = [rng.randrange(2**17) for _ in range(64)] + [0, 2**32 - 1]
    mask = key.green_mask(torch.tensor(prev), 300)
    for i, p in enumerate(prev):
        for v in rng.sample(range(300), 20):
            assert bool(mask[i, v]) == _green_reference(key, p, v)
    # the pairwise form agrees with the (batch, vocab) form
    tokens = torch.randint(0, 300, (len(prev),))
    assert torch.equal(key.is_green(torch.tensor(prev), tokens), mask[torch.arange(len(prev)), tokens])


@pytest.mark.parametrize("gamma", [0.1, 0.25, 0.5])
def test_green_fraction_is_gamma_per_context_and_per_token(gamma):
    key = WatermarkKey(SECRET, gamma=gamma)
    mask = key.green_mask(torch.arange(400), 4000).double()
    sd_row = math.sqrt(gamma * (1 - gamma) / 4000)
    assert abs(mask.mean() - gamma) < 5 * math.sqrt(gamma * (1 - gamma) / mask.numel())
    assert (mask.mean(1) - gamma).abs().max() < 5 * sd_row        # every context's list has about gamma V tokens
    assert (mask.mean(0) - gamma).abs().max() < 5 * math.sqrt(gamma * (1 - gamma) / 400)
    other = WatermarkKey(bytes(reversed(SECRET)), gamma=gamma).green_mask(torch.arange(400), 4000).double()
    # another key's lists are independent: they agree on gamma^2 + (1 - gamma)^2 of the entries
    agree = (mask == other).double().mean()
    assert abs(agree - (gamma**2 + (1 - gamma) ** 2)) < 0.01


def test_processor_adds_delta_to_the_green_tokens_of_each_rows_context():
    key = WatermarkKey(SECRET, delta=1.5)
    tokens = torch.tensor([[5, 7, 9], [1, 2, 3]])
    logits = torch.randn(2, 50)
    out = key.processor()(tokens, logits)
    expected = logits + 1.5 * key.green_mask(torch.tensor([9, 3]), 50).float()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_z_score_and_p_value_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for green, n, gamma in [(40, 100, 0.25), (20, 100, 0.25), (70, 200, 0.5)]:
        z = z_score(green, n, gamma)
        mean, var = stats.binom.stats(n, gamma)
        assert z == pytest.approx((green - mean) / math.sqrt(var))
        assert p_value(z) == pytest.approx(stats.norm.sf(z), rel=1e-9)


def test_detect_counts_each_pair_once_by_default():
    key = WatermarkKey(SECRET)
    ids = [3, 4] * 50                                  # two distinct pairs, repeated
    assert key.detect(ids)["scored"] == 2
    assert key.detect(ids, unique=False)["scored"] == 99
    with pytest.raises(Exception, match="fewer than 2 tokens"):
        key.detect([5])


def _model(lm_run):
    from fastlm.train.run import load_run

    _, model, _ = load_run(lm_run, "cpu")
    return model.eval()


def test_generation_is_detected_and_plain_generation_is_not(lm_run):
    model = _model(lm_run)
    key = WatermarkKey(SECRET)
    prompt = torch.tensor([[1]] * 16)
    marked = model.generate(prompt, 31, temperature=1.0, generator=torch.Generator().manual_seed(0),
                            logits_processor=key.processor())
    plain = model.generate(prompt, 31, temperature=1.0, generator=torch.Generator().manual_seed(0))
    z_marked = [key.detect(row, unique=False)["z"] for row in marked.tolist()]
    z_plain = [key.detect(row, unique=False)["z"] for row in plain.tolist()]
    z_other = [WatermarkKey(bytes(32)).detect(row, unique=False)["z"] for row in marked.tolist()]
    # a barely trained model samples nearly uniformly: green probability ~0.71 against 0.25
    assert min(z_marked) > 3
    assert max(z_plain) < 3 and abs(sum(z_plain) / len(z_plain)) < 1
    assert max(z_other) < 3 and abs(sum(z_other) / len(z_other)) < 1


def test_greedy_with_a_huge_delta_only_picks_green_tokens(lm_run):
    model = _model(lm_run)
    key = WatermarkKey(SECRET, delta=1e4)
    out = model.generate(torch.tensor([[1], [2]]), 20, temperature=0.0, logits_processor=key.processor())
    for row in out.tolist():
        r = key.detect(row, unique=False)
        assert r["green"] == r["scored"] == 20


def test_identity_processor_changes_nothing(lm_run):
    model = _model(lm_run)
    prompt = torch.tensor([[1], [2]])
    a = model.generate(prompt, 12, top_k=20, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 12, top_k=20, generator=torch.Generator().manual_seed(1),
                       logits_processor=lambda tokens, logits: logits)
    assert torch.equal(a, b)


def _key_file(tmp_path):
    path = tmp_path / "wm.key"
    assert main(["keygen", str(path)]) == 0
    return path


def test_cli_generate_with_watermark_then_detect(lm_run, tmp_path, capsys):
    import json

    from fastlm.accountability.watermark import read_token_ids

    key = tmp_path / "fixed.key"
    key.write_text(base64.b64encode(SECRET).decode() + "\n")   # a fixed key: the test is deterministic
    # top-k 50 (the default): the barely trained model's likely tokens decode to valid text (its rare byte
    # tokens decode to U+FFFD, whose re-encoding loses them)
    assert main(["generate", str(lm_run), "--prompt", "The", "--max-new-tokens", "30", "--temperature", "1.0",
                 "--watermark", str(key), "--watermark-delta", "8"]) == 0
    text = tmp_path / "out.txt"
    text.write_text(capsys.readouterr().out.rstrip("\n"))
    assert main(["watermark", "detect", str(text), "--key", str(key), "--run", str(lm_run), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    # the CLI tokenizes the text with the run's tokenizer (decoding and re-encoding merges some tokens,
    # which breaks some green pairs) and scores it as the API does
    assert r == WatermarkKey(SECRET).detect(read_token_ids(text, lm_run))
    assert r["z"] > 2.33 and r["p_value"] < 0.01
    assert r["p_value"] == pytest.approx(p_value(r["z"]))


def test_cli_detect_errors_are_one_line(lm_run, tmp_path, capsys):
    key = _key_file(tmp_path)
    text = tmp_path / "t.txt"
    text.write_text("some text")
    assert main(["watermark", "detect", str(text), "--key", str(key)]) == 1
    assert "pass --run RUN_DIR" in capsys.readouterr().err
    bad = tmp_path / "bad.key"
    bad.write_text(base64.b64encode(b"short").decode())
    assert main(["watermark", "detect", str(text), "--key", str(bad), "--run", str(lm_run)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastlm: error: watermark key") and "5 bytes, expected 32" in err and "Traceback" not in err
    assert main(["watermark", "detect", str(text), "--key", str(tmp_path / "none.key"), "--run", str(lm_run)]) == 1
    assert "cannot read it" in capsys.readouterr().err
    assert main(["generate", str(lm_run), "--prompt", "The", "--watermark", str(key), "--watermark-gamma", "1.5"]) == 1
    assert "gamma must be in (0, 1)" in capsys.readouterr().err
    ids = tmp_path / "ids.txt"
    ids.write_text("1 2 3 4 5")
    assert main(["watermark", "detect", str(ids), "--key", str(key)]) == 0
    assert "green" in capsys.readouterr().out
