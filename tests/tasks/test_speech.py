"""Speech recognition: WAV reading, log-mel features, CTC decoding, training on synthetic tone
"speech", malformed audio, and (with espeak-ng) the synthesized demo."""
import itertools
import json
import math
import shutil
import wave

import numpy as np
import pytest
import torch

from fastlm.tasks import get_task
from fastlm.tasks.config import task_config_from_dict
from fastlm.tasks.datasets import DatasetError
from fastlm.tasks.loop import evaluate_run, finetune
from fastlm.tasks.speech import ctc_beam_search, ctc_greedy, log_mel, mel_filterbank, read_wav
from tests.tasks.task_helpers import write_jsonl

TASK = get_task("speech")
RATE = 8000
TONES = {ch: 400 + 250 * i for i, ch in enumerate("abcde")}


def write_wav(path, samples: np.ndarray, rate=RATE, width=2, channels=1):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        scale = {1: 127, 2: 32767, 4: 2147483647}[width]
        data = np.clip(samples, -1, 1) * scale
        if width == 1:
            data = (data + 128).astype(np.uint8)
        else:
            data = data.astype({2: "<i2", 4: "<i4"}[width])
        w.writeframes(np.repeat(data[:, None], channels, axis=1).tobytes())


def tone_speech(text: str, rng) -> np.ndarray:
    """Each character a 80 ms tone of its own pitch, with short silences: learnable in a few steps."""
    parts = []
    for ch in text:
        n = int(RATE * rng.uniform(0.07, 0.09))
        t = np.arange(n) / RATE
        parts += [0.5 * np.sin(2 * math.pi * TONES[ch] * t), np.zeros(int(RATE * 0.03))]
    return np.concatenate(parts) + 0.01 * rng.standard_normal(sum(len(p) for p in parts))


def make_dataset(root, n, seed):
    rng = np.random.default_rng(seed)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        text = "".join(rng.choice(list(TONES), rng.integers(2, 5)))
        write_wav(root / "clips" / f"{seed}-{i}.wav", tone_speech(text, rng))
        rows.append({"audio": f"clips/{seed}-{i}.wav", "text": text})
    return write_jsonl(root / f"data-{seed}.jsonl", rows)


def _config(train, val=None, **train_keys):
    t = {"steps": 40, "global_batch_size": 8, "micro_batch_size": 8, "lr": 3e-3, "warmup_steps": 4, "min_lr": 3e-4,
         "weight_decay": 0.0, "log_every": 1, "eval_every": 0, "precision": "fp32", **train_keys}
    task = {"train": train, "n_mels": 20}
    if val:
        task["validation"] = val
    return task_config_from_dict({"task": task, "model": {"n_layer": 1, "n_head": 2, "d_model": 32},
                                  "train": t, "checkpoint": {"every": 0}}, TASK.Section)


# ---------------------------------------------------------------- audio and features

@pytest.mark.parametrize("width, channels", [(1, 1), (2, 1), (2, 2), (4, 1)])
def test_read_wav(tmp_path, width, channels):
    x = 0.5 * np.sin(np.linspace(0, 20, 400))
    write_wav(tmp_path / "a.wav", x, rate=16000, width=width, channels=channels)
    wav, rate = read_wav(tmp_path / "a.wav")
    assert rate == 16000 and wav.shape == (400,)
    np.testing.assert_allclose(wav.numpy(), x, atol=2 / 127 if width == 1 else 1e-4)


def test_log_mel_frames_and_pitch():
    rate = 16000
    feats = log_mel(torch.sin(2 * math.pi * 1000 * torch.arange(rate) / rate), rate, n_mels=40, normalize=False)
    assert feats.shape == (1 + (rate - 512) // 160, 40)  # 25 ms windows in 512-point FFTs, every 10 ms
    fb = mel_filterbank(40, 512, rate)
    # the loudest channel is the filter that weighs 1000 Hz the most
    assert int(feats.mean(0).argmax()) == int(fb[:, round(1000 / (rate / 512))].argmax())
    norm = log_mel(torch.randn(8000), 8000, 20)
    torch.testing.assert_close(norm.mean(0), torch.zeros(20), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- CTC decoding

def test_ctc_greedy():
    # frames: a a blank a b b blank -> "a a b" (a blank separates the repeated a)
    path = [1, 1, 0, 1, 2, 2, 0]
    lp = torch.full((7, 3), -10.0)
    lp[torch.arange(7), torch.tensor(path)] = 0
    assert ctc_greedy(lp) == [1, 1, 2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ctc_beam_search_finds_the_most_probable_labelling(seed):
    torch.manual_seed(seed)
    T, C = 4, 3
    lp = (torch.randn(T, C) * 1.5).log_softmax(-1).double()
    totals = {}
    for path in itertools.product(range(C), repeat=T):  # every alignment, collapsed
        lab, prev = [], 0
        for s in path:
            if s != prev and s != 0:
                lab.append(s)
            prev = s
        p = math.exp(sum(lp[t, s].item() for t, s in enumerate(path)))
        totals[tuple(lab)] = totals.get(tuple(lab), 0.0) + p
    best = max(totals, key=totals.get)
    assert ctc_beam_search(lp, beam_size=64) == list(best)
    assert ctc_beam_search(lp, beam_size=1) in [list(k) for k in totals]


# ---------------------------------------------------------------- training

def test_speech_trains_on_tones(tmp_path):
    train = make_dataset(tmp_path, 48, 0)
    val = make_dataset(tmp_path, 8, 1)
    result = finetune(TASK, _config(train, val), tmp_path / "run", show_progress=False)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5])
    m = result["metrics"]
    assert {"wer", "cer", "loss"} <= set(m) and m["examples"] == 8
    assert not (tmp_path / "run" / "tokenizer.json").exists()  # characters, no tokenizer
    again = evaluate_run(TASK, tmp_path / "run")["metrics"]
    assert again["cer"] == pytest.approx(m["cer"])
    tc = _config(train, val)
    tc.task.beam_size = 4
    # beam decoding through the same evaluate path
    from fastlm.tasks.loop import load_task_run

    _, model, _, info = load_task_run(TASK, tmp_path / "run")
    examples = TASK.encode(tc, TASK.read_split(tc, tmp_path / "data-1.jsonl", info), None, info)
    beam = TASK.evaluate(model, examples, info, torch.device("cpu"), torch.autocast("cpu", enabled=False), 8, tc)[0]
    assert beam["decoding"] == "beam 4" and 0 <= beam["cer"]


def test_unreadable_audio_and_unknown_characters(tmp_path):
    train = make_dataset(tmp_path, 6, 0)
    (tmp_path / "clips" / "bad.wav").write_bytes(b"RIFF not really")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"audio": "clips/0-0.wav", "text": "ab"},
                                               {"audio": "clips/bad.wav", "text": "ab"}])
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2: cannot read audio .*bad\.wav"):
        finetune(TASK, _config(bad), tmp_path / "run", show_progress=False)
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"audio": "clips/nope.wav", "text": "ab"}])
    with pytest.raises(DatasetError, match=r"missing\.jsonl:1: cannot read audio"):
        finetune(TASK, _config(missing), tmp_path / "run", show_progress=False)
    val = write_jsonl(tmp_path / "val.jsonl", [{"audio": "clips/0-0.wav", "text": "xyz"}])
    with pytest.raises(DatasetError, match=r"val\.jsonl:1: characters 'xyz' do not occur"):
        finetune(TASK, _config(train, val), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng is not installed (apt-get install espeak-ng): the speech demo synthesizes its audio with it")
def test_speech_demo_with_espeak(tmp_path, monkeypatch):
    from fastlm.tasks.demo import demo_dataset

    paths = demo_dataset("speech", tmp_path / "cache", size=20)
    rows = [json.loads(x) for x in paths["train"].read_text().splitlines()]
    assert len(rows) == 18
    wav, rate = read_wav(paths["train"].parent / rows[0]["audio"])
    assert rate > 0 and wav.abs().max() > 0.01
    result = finetune(TASK, _config(str(paths["train"]), str(paths["validation"]), steps=2), tmp_path / "run",
                      show_progress=False)
    assert result["metrics"]["examples"] == 2
