"""Encrypted weights at rest ([checkpoint] encrypt): the file format, keys, and every writer and reader
(train, --resume, eval, generate, export, quantize, finetune/evaluate) with and without the key."""
from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from fastlm.cli import main
from fastlm.privacy.encryption import (
    AUTH_FAILED,
    KEY_ENV,
    RUN_ID_FILE,
    Encryption,
    load_key,
    new_key_text,
    run_id,
)
from fastlm.train import ConfigError, FastlmError, Trainer, load_config
from fastlm.train.run import load_run
from fastlm.train.weight_files import load_model_file, save_model_file

KEY = new_key_text()
OTHER_KEY = new_key_text()
# A micro model (about a second a run on one core): 4 steps, a checkpoint every 2.
FAST = ["model.n_layer=2", "model.n_head=4", "model.n_kv_head=2", "model.d_model=32", "data.vocab_size=320",
        "data.seq_len=32", "data.builtin_modules=[]", "train.steps=4", "train.global_batch_size=4",
        "train.micro_batch_size=2", "train.warmup_steps=1", "train.eval_every=0", "train.eval_batches=2",
        "train.precision=fp32", "checkpoint.every=2", "checkpoint.keep=5", "checkpoint.encrypt=true"]


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def train(out: Path, *extra: str) -> int:
    return main(["train", "tiny", "--out", str(out), "--quiet", *_sets(*FAST, *extra)])


def error_line(capsys) -> str:
    """The CLI's error output: exactly one line, "fastlm: error: ..."."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastlm: error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished encrypted runs with the same key (env FASTLM_CHECKPOINT_KEY): a and b (other seed)."""
    root = tmp_path_factory.mktemp("encrypted")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, KEY)
        assert train(root / "a") == 0
        assert train(root / "b", "train.seed=1") == 0
    return root / "a", root / "b"


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def copy_run(runs, tmp_path, name="copy") -> Path:
    """A copy of run a to change."""
    out = tmp_path / name
    shutil.copytree(runs[0], out)
    return out


# ---------------------------------------------------------------- the file format

@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 640, 1000])
def test_round_trip_over_chunk_boundaries(tmp_path, key, size):
    enc = Encryption(tmp_path, create_id=True, chunk_bytes=64)
    data = os.urandom(size)
    enc.write(tmp_path / "f.bin", data, "f.bin")
    raw = (tmp_path / "f.bin").read_bytes()
    assert raw.startswith(b"FLMCRYPT") and (size < 16 or data not in raw)
    assert Encryption(tmp_path).read(tmp_path / "f.bin", "f.bin") == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin", RUN_ID_FILE]  # no temporary files left


def _damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    record = 12 + 64 + 16
    if how == "flip":
        raw[len(raw) // 2] ^= 1
    elif how == "flip_header":
        raw[12] ^= 1  # the chunk size
    elif how == "truncate_chunk":  # drop the last whole record
        raw = raw[:13 + 9 * record]
    elif how == "truncate":
        raw = raw[:-5]
    elif how == "swap_chunks":
        a, b = raw[13:13 + record], raw[13 + record:13 + 2 * record]
        raw[13:13 + 2 * record] = b + a
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["flip", "flip_header", "truncate_chunk", "truncate", "swap_chunks"])
def test_a_changed_file_fails_as_a_whole(tmp_path, key, how):
    enc = Encryption(tmp_path, create_id=True, chunk_bytes=64)
    enc.write(tmp_path / "f.bin", os.urandom(64 * 10 + 7), "f.bin")
    _damage(tmp_path / "f.bin", how)
    with pytest.raises(FastlmError, match="authentication failed") as e:
        Encryption(tmp_path).read(tmp_path / "f.bin", "f.bin")
    assert str(tmp_path / "f.bin") in str(e.value) and "\n" not in str(e.value)


def test_name_run_and_key_are_authenticated(tmp_path, key, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    Encryption(a, create_id=True).write(a / "x", b"weights", "x")
    Encryption(b, create_id=True).write(b / "x", b"weights", "x")
    assert run_id(a) != run_id(b)
    assert Encryption(a).read(a / "x", "x") == b"weights"
    with pytest.raises(FastlmError, match=AUTH_FAILED.replace("(", r"\(").replace(")", r"\)")):
        Encryption(a).read(a / "x", "y")                     # renamed
    shutil.copyfile(b / "x", a / "x")
    with pytest.raises(FastlmError, match="authentication failed"):
        Encryption(a).read(a / "x", "x")                     # swapped in from another run
    monkeypatch.setenv(KEY_ENV, OTHER_KEY)
    with pytest.raises(FastlmError, match="authentication failed"):
        Encryption(b).read(b / "x", "x")                     # wrong key
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(FastlmError, match=f"{b / 'x'}: cannot decrypt: no key .*{KEY_ENV}.*checkpoint.key_file"):
        Encryption(b).read(b / "x", "x")


def test_plaintext_and_encrypted_files_are_not_confused(tmp_path, key):
    model = torch.nn.Linear(3, 2)
    save_model_file(model, tmp_path / "plain.safetensors")
    with pytest.raises(FastlmError, match="not encrypted, but checkpoint.encrypt = true"):
        load_model_file(model, tmp_path / "plain.safetensors", enc=Encryption(tmp_path), name="plain.safetensors")
    save_model_file(model, tmp_path / "secret.safetensors", Encryption(tmp_path, create_id=True), "secret.safetensors")
    with pytest.raises(FastlmError, match="is encrypted, but is read as plaintext"):
        load_model_file(model, tmp_path / "secret.safetensors")
    other = torch.nn.Linear(3, 2)
    load_model_file(other, tmp_path / "secret.safetensors", enc=Encryption(tmp_path), name="secret.safetensors")
    assert torch.equal(other.weight, model.weight) and torch.equal(other.bias, model.bias)


def test_tied_weights_round_trip(tmp_path, key):
    from fastlm.models import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=64, max_seq_len=16, n_layer=1, n_head=2, d_model=16, tie_embeddings=True))
    enc = Encryption(tmp_path, create_id=True)
    save_model_file(model, tmp_path / "m", enc, "m")
    other = GPT(model.config)
    load_model_file(other, tmp_path / "m", enc=enc, name="m")
    for (name, p), q in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(p, q), name
    assert other.lm_head.weight.data_ptr() == other.tok_emb.weight.data_ptr()


# ---------------------------------------------------------------- keys and config

def test_key_sources_and_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(FastlmError, match=f"no key .*{KEY_ENV}.*checkpoint.key_file"):
        load_key()
    monkeypatch.setenv(KEY_ENV, KEY)
    assert load_key() == base64.b64decode(KEY)
    key_file = tmp_path / "k"
    key_file.write_text(OTHER_KEY + "\n")
    assert load_key(key_file) == base64.b64decode(OTHER_KEY)  # key_file wins over the environment
    for text, message in (("not base64!", "not base64"), (base64.b64encode(b"short").decode(), "5 bytes, expected 32")):
        monkeypatch.setenv(KEY_ENV, text)
        with pytest.raises(FastlmError, match=message):
            load_key()
    with pytest.raises(FastlmError, match="cannot read the key"):
        load_key(tmp_path / "missing")


def test_config_checks(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    config = load_config("tiny", FAST)
    with pytest.raises(ConfigError, match=f"checkpoint.encrypt = true: no key .*{KEY_ENV}.*checkpoint.key_file"):
        Trainer(config, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="checkpoint.encrypt = true: not available with sharded checkpoints"):
        load_config("tiny", [*FAST, "parallel.tp=2"])
    with pytest.raises(ConfigError, match="checkpoint.key_file = .*set checkpoint.encrypt = true too"):
        load_config("tiny", ["checkpoint.key_file=k"])
    with pytest.raises(ConfigError, match='model.family = "ngram"'):
        load_config("ngram", ["checkpoint.encrypt=true"])


def test_keygen(tmp_path, capsys):
    path = tmp_path / "run.key"
    assert main(["keygen", str(path)]) == 0
    assert capsys.readouterr().out.strip() == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert len(base64.b64decode(first.strip(), validate=True)) == 32
    assert main(["keygen", str(path)]) == 1
    assert "already exists" in error_line(capsys) and path.read_text() == first
    assert main(["keygen", str(path), "--force"]) == 0
    assert path.read_text() != first and stat.S_IMODE(path.stat().st_mode) == 0o600


# ---------------------------------------------------------------- a training run and its readers

# What plaintext files would contain: a safetensors header, a torch.save archive (optimizer and RNG state).
FORMAT_NEEDLES = [b'"dtype":"F32"', b"data.pkl"]


def _weight_needles(run_dir: Path) -> list[bytes]:
    """FORMAT_NEEDLES and the bytes of one of the run's weights."""
    _, model, _ = load_run(run_dir)
    weight = model.state_dict()["tok_emb.weight"]
    return [*FORMAT_NEEDLES, weight.flatten()[:16].numpy().tobytes()]


def assert_no_plaintext(directory: Path, needles: list[bytes]) -> None:
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert files
    for path in files:
        raw = path.read_bytes()
        for needle in needles:
            assert needle not in raw, (path, needle)


def test_no_plaintext_weights_on_disk(runs, key, tmp_path):
    a, _ = runs
    names = {str(p.relative_to(a)) for p in a.rglob("*") if p.is_file()}
    assert {"model.safetensors", "checkpoints/step_0000002/optimizer.pt", "checkpoints/step_0000004/state.pt",
            RUN_ID_FILE} <= names
    needles = _weight_needles(a)
    assert_no_plaintext(a, needles)
    config = (a / "config.toml").read_text()
    assert "encrypt = true" in config and KEY not in config
    assert main(["export", str(a), "--out", str(tmp_path / "hf")]) == 0
    assert main(["quantize", str(a), "--scheme", "w8a16", "--out", str(tmp_path / "q")]) == 0
    assert_no_plaintext(tmp_path / "hf", needles)
    assert_no_plaintext(tmp_path / "q", FORMAT_NEEDLES)  # int8 weights: other bytes, but no safetensors header


def test_resume_with_the_key_is_bit_exact(runs, key, tmp_path):
    a, _ = runs
    resumed = copy_run(runs, tmp_path)
    shutil.rmtree(resumed / "checkpoints" / "step_0000004")
    (resumed / "model.safetensors").unlink()
    assert main(["train", "tiny", "--out", str(resumed), "--quiet", "--resume", *_sets(*FAST)]) == 0
    assert json.loads((resumed / RUN_ID_FILE).read_text()) == json.loads((a / RUN_ID_FILE).read_text())
    wa, wb = load_run(a)[1].state_dict(), load_run(resumed)[1].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_readers_work_with_the_key(runs, key, tmp_path, capsys):
    a, _ = runs
    assert main(["eval", str(a)]) == 0
    assert "val_loss" in capsys.readouterr().out
    assert main(["generate", str(a), "--prompt", "The", "--max-new-tokens", "4"]) == 0
    assert main(["quantize", str(a), "--scheme", "w8a8", "--out", str(tmp_path / "q")]) == 0
    assert main(["eval", str(tmp_path / "q")]) == 0
    assert json.loads((tmp_path / "q" / RUN_ID_FILE).read_text()) != json.loads((a / RUN_ID_FILE).read_text())


def test_export_decrypts_to_a_transformers_checkpoint(runs, key, tmp_path):
    transformers = pytest.importorskip("transformers")
    a, _ = runs
    out = tmp_path / "hf"
    assert main(["export", str(a), "--out", str(out)]) == 0
    plain = tmp_path / "plain"
    shutil.copytree(out, plain)
    (plain / "model.safetensors").write_bytes(Encryption(out).read(out / "model.safetensors", "model.safetensors"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(plain)).eval()
    model = load_run(a)[1].eval()
    x = torch.randint(0, 320, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), rtol=1e-4, atol=1e-5)


READERS = {
    "resume": lambda run, tmp: ["train", "tiny", "--out", str(run), "--quiet", "--resume", *_sets(*FAST)],
    "eval": lambda run, tmp: ["eval", str(run)],
    "generate": lambda run, tmp: ["generate", str(run), "--prompt", "The"],
    "export": lambda run, tmp: ["export", str(run), "--out", str(tmp / "hf")],
    "quantize": lambda run, tmp: ["quantize", str(run), "--scheme", "w8a16", "--out", str(tmp / "q")],
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("problem", ["missing key", "wrong key"])
def test_readers_fail_cleanly_without_the_key(runs, tmp_path, capsys, monkeypatch, reader, problem):
    run = copy_run(runs, tmp_path)
    before = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    if problem == "missing key":
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, OTHER_KEY)
    assert main(READERS[reader](run, tmp_path)) == 1
    line = error_line(capsys)
    expected = "no key" if problem == "missing key" else "authentication failed"
    assert expected in line
    assert reader == "resume" and problem == "missing key" or "model.safetensors" in line
    after = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before and not (tmp_path / "hf").exists() and not (tmp_path / "q").exists()


def test_swapped_renamed_and_modified_files(runs, key, tmp_path, capsys):
    a, b = copy_run(runs, tmp_path, "swapped"), runs[1]
    # Final weights swapped in from run b, with their seal: the seal fits, the run id does not.
    for name in ("model.safetensors", "weights.json"):
        shutil.copyfile(b / name, a / name)
    assert main(["eval", str(a)]) == 1
    assert f"{a / 'model.safetensors'}: authentication failed" in error_line(capsys)
    # A modified byte where no seal guards it (weights.json removed): the encryption still catches it.
    a = copy_run(runs, tmp_path, "modified")
    (a / "weights.json").unlink()
    raw = bytearray((a / "model.safetensors").read_bytes())
    raw[-100] ^= 0x40
    (a / "model.safetensors").write_bytes(bytes(raw))
    assert main(["generate", str(a), "--prompt", "The"]) == 1
    assert f"{a / 'model.safetensors'}: authentication failed" in error_line(capsys)
    # A checkpoint renamed to a later step: bound to its name, so --resume refuses it.
    a = copy_run(runs, tmp_path, "renamed")
    shutil.rmtree(a / "checkpoints" / "step_0000004")
    os.rename(a / "checkpoints" / "step_0000002", a / "checkpoints" / "step_0000004")
    assert main(READERS["resume"](a, tmp_path)) == 1
    assert "step_0000004/model.safetensors: authentication failed" in error_line(capsys)


def test_a_plaintext_run_is_not_read_as_encrypted(tmp_path, key, capsys):
    plain = tmp_path / "plain"
    assert train(plain, "checkpoint.encrypt=false") == 0
    text = (plain / "config.toml").read_text().replace("encrypt = false", "encrypt = true")
    (plain / "config.toml").write_text(text)
    assert main(["eval", str(plain)]) == 1
    assert "not encrypted, but checkpoint.encrypt = true" in error_line(capsys)


def test_key_file_is_recorded_by_path(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(KEY_ENV, raising=False)
    key_file = tmp_path / "secret" / "run.key"
    key_file.parent.mkdir()
    assert main(["keygen", str(key_file)]) == 0
    monkeypatch.chdir(tmp_path)
    assert train(tmp_path / "run", "checkpoint.key_file=secret/run.key") == 0
    config = load_config(tmp_path / "run" / "config.toml")
    assert config.checkpoint.key_file == str(key_file.resolve())
    assert key_file.read_text().strip() not in (tmp_path / "run" / "config.toml").read_text()
    monkeypatch.chdir(key_file.parent)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 0  # from another directory, through the recorded path
    monkeypatch.setenv(KEY_ENV, new_key_text())  # the env key does not override a configured key_file
    assert main(["eval", str(tmp_path / "run")]) == 0


def test_init_from_an_encrypted_run_needs_encryption(runs, key, tmp_path, capsys):
    a, _ = runs
    args = ["train", "tiny", "--out", str(tmp_path / "child"), "--quiet", *_sets(*FAST, f"model.init_from={a}")]
    assert main([*args, "--set", "checkpoint.encrypt=false"]) == 1
    assert "is an encrypted run: set checkpoint.encrypt = true" in error_line(capsys)
    assert main(args) == 0
    assert_no_plaintext(tmp_path / "child", FORMAT_NEEDLES)


def test_finetune_and_evaluate(tmp_path, key, capsys, monkeypatch):
    from fastlm.train.config import dumps_toml
    from tests.tasks.task_helpers import synthetic_records, tiny_config, write_jsonl

    train = write_jsonl(tmp_path / "train.jsonl", synthetic_records(40, seed=0))
    val = write_jsonl(tmp_path / "val.jsonl", synthetic_records(12, seed=1))
    raw = tiny_config(train, val, steps=2)
    raw["checkpoint"] = {"every": 1, "encrypt": True}
    cfg = tmp_path / "cls.toml"
    cfg.write_text(dumps_toml(raw))
    run = tmp_path / "run"
    assert main(["finetune", "classification", str(cfg), "--out", str(run), "--quiet"]) == 0
    assert (run / "checkpoints" / "step_0000002" / "optimizer.pt").is_file()
    assert_no_plaintext(run, FORMAT_NEEDLES)
    assert main(["finetune", "classification", str(cfg), "--out", str(run), "--quiet", "--resume"]) == 0
    assert main(["evaluate", "classification", str(run)]) == 0
    monkeypatch.delenv(KEY_ENV)
    capsys.readouterr()
    assert main(["evaluate", "classification", str(run)]) == 1
    assert f"{run / 'model.safetensors'}: cannot decrypt: no key" in error_line(capsys)
    assert main(["finetune", "classification", str(cfg), "--out", str(tmp_path / "r2"), "--quiet"]) == 1
    assert "checkpoint.encrypt = true: no key" in error_line(capsys) and not (tmp_path / "r2").exists()


def test_data_parallel_run_and_resume(tmp_path, key):
    """torchrun with 2 processes: rank 0 writes encrypted checkpoints, every rank reads them on --resume."""
    import subprocess
    import sys

    from tests.parallel.dist_helpers import free_port

    def torchrun(out: Path, *extra: str) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2", "--master-port",
               str(free_port()), "-m", "fastlm", "train", "tiny", "--out", str(out), "--quiet",
               *extra, *_sets(*FAST)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    torchrun(straight)
    assert_no_plaintext(straight, _weight_needles(straight))
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000004")
    (resumed / "model.safetensors").unlink()
    torchrun(resumed, "--resume")
    wa, wb = load_run(straight)[1].state_dict(), load_run(resumed)[1].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
