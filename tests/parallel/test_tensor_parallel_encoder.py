"""Tensor parallelism for encoders (gloo processes): BERT, ALBERT (factorized embedding, one block
shared by 3 layers, sentence-order head) and RoBERTa on padded batches (the packed varlen path)
train at tp = 2 and dp = 2 x tp = 2 to the same losses, gradient norms and parameters as one
process; a tp = 2 sharded checkpoint resumes on one process. `torchrun ... fastlm train bert-tiny`
at dp = 2, tp = 2 (and dp 2 x tp 2) equals the single-process run."""
import pytest
import torch

from tests.parallel import tp_encoder_workers as workers
from tests.parallel.dist_helpers import run_world
from tests.parallel.test_tensor_parallel_training import assert_same

_REFS = {}


def reference(family):
    if family not in _REFS:
        _REFS[family] = run_world(workers.train, 1, {"family": family}, timeout=120)[0]
    return _REFS[family]


def test_forward_of_every_encoder_kind_at_tp2():
    errs = run_world(workers.forward_checks, 2, "bert", timeout=120)
    for rank_errs in errs:
        assert max(rank_errs.values()) < 1e-5, rank_errs


@pytest.mark.parametrize("family,world", [
    ("bert", 2),
    ("albert", 2),
    ("albert", 4),                                  # dp 2 x tp 2
    pytest.param("bert", 4, marks=pytest.mark.slow),
    pytest.param("roberta", 2, marks=pytest.mark.slow),
])
def test_encoder_tp_training_equals_one_process(family, world):
    got = run_world(workers.train, world, {"family": family, "tp": 2}, timeout=240)
    assert "mlm_head.decoder.weight" in got[0]["params"]  # the tied decoder, under its own name too
    for rank, g in enumerate(got):  # d_model 32, d_ff 48, vocab 67 = 34 + 33: really split, still tied
        tp_rank = rank % 2
        assert g["split"] == {"qkv rows": 48, "fc rows": 24, "vocab rows": 34 - tp_rank, "tied": True}, rank
    assert_same(reference(family), got)


def test_encoder_dp2_equals_one_process():
    got = run_world(workers.train, 2, {"family": "bert", "tp": 1}, timeout=240)
    assert_same(reference("bert"), got)


def test_encoder_tp2_checkpoint_resumes_on_one_process(tmp_path):
    path = str(tmp_path / "ckpt")
    # tp = 2 saves after its first step; one process loads that and runs the other two.
    run_world(workers.train, 2, {"family": "albert", "tp": 2, "steps": 2, "save_at": 1, "save_to": path}, timeout=240)
    resumed = run_world(workers.train, 1, {"family": "albert", "load_from": path}, timeout=120)[0]
    ref = reference("albert")
    assert resumed["losses"] == pytest.approx(ref["losses"][1:], abs=2e-5)
    for k, v in ref["params"].items():
        torch.testing.assert_close(resumed["params"][k], v, atol=2e-5, rtol=1e-4, msg=k)


def test_sequence_parallel_is_rejected_for_encoders():
    from fastlm.train import load_config
    from fastlm.train.errors import ConfigError

    with pytest.raises(ConfigError, match="sequence_parallel = true and model.family = \"bert\""):
        load_config("bert-tiny", ["parallel.tp=2", "parallel.sequence_parallel=true"])
    load_config("bert-tiny", ["parallel.tp=2"])  # tensor parallel alone is fine


# ---------------------------------------------------------------- `torchrun ... fastlm train bert-tiny`

ENCODER_RUN = ["data.builtin_modules=[]", "data.vocab_size=300", "data.seq_len=32", "model.d_model=32",
               "model.n_head=4", "model.n_layer=2", "model.dropout=0.0", "train.steps=4", "train.global_batch_size=4",
               "train.micro_batch_size=2", "train.lr=3e-3", "train.warmup_steps=1", "train.log_every=1",
               "train.eval_every=0", "train.eval_batches=2", "train.precision=fp32", "checkpoint.every=2",
               "checkpoint.keep=5"]


def _torchrun_bert(out, extra, nproc=2, resume=False):
    import os
    import subprocess

    from tests.parallel.dist_helpers import free_port
    from tests.parallel.test_trainer_dp import TORCHRUN, _sets

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    cmd = [TORCHRUN, "--nproc-per-node", str(nproc), "--master-port", str(free_port()), "-m", "fastlm", "train",
           "bert-tiny", "--out", str(out), "--quiet", *(["--resume"] if resume else []),
           *_sets([*ENCODER_RUN, *extra])]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def single_bert(tmp_path_factory):
    from fastlm.train import Trainer, load_config

    out = tmp_path_factory.mktemp("single_bert") / "run"
    Trainer(load_config("bert-tiny", ENCODER_RUN), out_dir=out, show_progress=False).fit()
    return out


@pytest.mark.parametrize("extra,nproc", [
    ([], 2),                                             # dp = 2
    (["parallel.tp=2"], 2),
    (["parallel.pp=2"], 2),                              # the encoder split into pipeline stages
    pytest.param(["parallel.tp=2"], 4, marks=pytest.mark.slow),  # dp 2 x tp 2
    pytest.param(["parallel.pp=2", "parallel.tp=2"], 4, marks=pytest.mark.slow),
])
def test_torchrun_bert_equals_one_process(tmp_path, single_bert, extra, nproc):
    import shutil

    from fastlm.train import Trainer, load_config
    from fastlm.train.run import load_run
    from tests.parallel.test_trainer_dp import _assert_same_run

    out = tmp_path / "run"
    r = _torchrun_bert(out, extra, nproc)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(out, single_bert, atol=1e-4)  # fp32 sums in another order, through AdamW
    _, model, _ = load_run(out)  # the finished run's weights are a plain encoder's
    assert type(model).__name__ == "EncoderForMaskedLM"
    if extra:  # tp / pp: step 2's sharded checkpoint, resumed by one process, finishes like the single run
        shutil.rmtree(out / "checkpoints" / "step_0000004")
        (out / "model.safetensors").unlink()
        _, model, _ = load_run(out)  # an unfinished tp run: its latest sharded checkpoint, in a plain encoder
        assert model.encoder.tok_emb.weight.abs().sum() > 0
        Trainer(load_config("bert-tiny", ENCODER_RUN), out_dir=out, resume=True, show_progress=False).fit()
        _assert_same_run(out, single_bert, atol=1e-4)
