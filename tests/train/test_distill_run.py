"""[distill] in fastlm train: the loss hook against the float64 definition, a whole run, clear errors."""
import pytest
import torch

from fastlm.data.inputs import model_inputs
from fastlm.ops import reference_distill as reference
from fastlm.train import ConfigError, Trainer
from fastlm.train.run import init_model_from
from tests.train.train_helpers import micro_config


def _student(teacher_dir, *extra):
    return micro_config("model.n_layer=1", "model.dropout=0.0", f"distill.teacher={teacher_dir}",
                        f"data.tokenizer={teacher_dir}/tokenizer.json", *extra)


def test_distill_run_and_its_loss_is_the_definition(finished_run, tmp_path):
    teacher_dir, _ = finished_run
    cfg = _student(teacher_dir, "distill.loss=jsd", "distill.beta=0.3", "distill.temperature=2.0",
                   "distill.alpha=0.7", "distill.top_k=5")
    trainer = Trainer(cfg, out_dir=tmp_path / "student", show_progress=False)
    summary = trainer.fit()
    assert summary["val_ppl"] == summary["val_ppl"] and (tmp_path / "student" / "model.safetensors").is_file()
    assert "[distill]" in (tmp_path / "student" / "config.toml").read_text()

    # The hook's loss on one batch == alpha * definition + (1 - alpha) * cross-entropy, in float64.
    from fastlm.distill.training import Distillation
    from fastlm.parallel import parallelize

    student = trainer.model.eval()
    teacher, _ = init_model_from(teacher_dir)
    teacher.eval()
    pm = parallelize(student, None, cfg)
    distill = Distillation(cfg.distill, student.lm_head, teacher=teacher)
    batch = torch.randint(0, 320, (2, 32))
    got = distill.loss_of(pm.runner, batch)
    with torch.no_grad():
        s_hidden = student.hidden_states(batch).double()
        t_logits = teacher(batch).double()
    targets = torch.nn.functional.pad(batch[:, 1:], (0, 1), value=-100).reshape(-1)
    mask = targets != -100
    kd = reference.linear_distill_loss(s_hidden.reshape(-1, s_hidden.shape[-1]), student.lm_head.weight.double(),
                                       t_logits.reshape(-1, 320), loss="jsd", beta=0.3, temperature=2.0, top_k=5,
                                       mask=mask).sum() / mask.sum()
    logits = s_hidden.reshape(-1, s_hidden.shape[-1]) @ student.lm_head.weight.double().t()
    ce = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)
    torch.testing.assert_close(got.double(), 0.7 * kd + 0.3 * ce, rtol=1e-4, atol=1e-5)
    # ... and evaluation still sees the plain cross-entropy (no teacher for this call)
    _, plain = pm.runner(**model_inputs(batch))
    torch.testing.assert_close(plain.double(), ce, rtol=1e-4, atol=1e-5)


def test_a_different_tokenizer_is_a_clear_error(finished_run, tmp_path):
    teacher_dir, _ = finished_run
    cfg = micro_config("model.n_layer=1", f"distill.teacher={teacher_dir}", "data.vocab_size=300")
    with pytest.raises(ConfigError, match="tokenizer"):
        Trainer(cfg, out_dir=tmp_path / "s", show_progress=False).fit()
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("override,match", [
    ("distill.loss=mse", "distill.loss"), ("distill.alpha=2", "distill.alpha"), ("distill.temperature=0", "temperature"),
    ("distill.top_k=-1", "distill.top_k"), ("distill.beta=-0.1", "distill.beta")])
def test_bad_distill_keys(override, match):
    with pytest.raises(ConfigError, match=match):
        micro_config(override)


def test_cli_distill_needs_a_teacher(capsys):
    from fastlm.cli import main

    assert main(["distill", "tiny", "--quiet"]) != 0
    assert "no teacher" in capsys.readouterr().err


def test_offline_teacher_gives_the_same_student_as_online(finished_run, tmp_path):
    from fastlm.cli import main
    from safetensors.torch import load_file

    teacher_dir, _ = finished_run
    keys = ["distill.top_k=6", "distill.temperature=1.5", "distill.loss=kl", "distill.alpha=0.6"]
    online = Trainer(_student(teacher_dir, *keys), out_dir=tmp_path / "online", show_progress=False).fit()
    sets = [a for key in [f"distill.teacher={teacher_dir}", f"data.tokenizer={teacher_dir}/tokenizer.json", *keys]
            for a in ("--set", key)]
    from tests.train.train_helpers import MICRO
    micro = [a for key in [*MICRO, "model.n_layer=1", "model.dropout=0.0"] for a in ("--set", key)]
    assert main(["distill", "tiny", *micro, *sets, "--save-teacher", str(tmp_path / "store"), "--quiet"]) == 0
    assert (tmp_path / "store" / "meta.json").is_file() and not (tmp_path / "store.partial").exists()
    offline = Trainer(_student(teacher_dir, *keys, "distill.teacher=", f"distill.teacher_store={tmp_path / 'store'}"),
                      out_dir=tmp_path / "offline", show_progress=False).fit()
    a, b = load_file(tmp_path / "online" / "model.safetensors"), load_file(tmp_path / "offline" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
    assert abs(online["val_loss"] - offline["val_loss"]) < 1e-4
    # ... and not because the teacher did nothing: the same student trained alone ends elsewhere
    Trainer(_student(teacher_dir, "distill.teacher="), out_dir=tmp_path / "alone", show_progress=False).fit()
    alone = load_file(tmp_path / "alone" / "model.safetensors")
    assert max((alone[n] - a[n]).abs().max().item() for n in a) > 1e-3
    # a stream the store does not hold (another seed) is a clear error
    with pytest.raises(ConfigError, match="no entry for a sequence"):
        Trainer(_student(teacher_dir, *keys, "distill.teacher=", f"distill.teacher_store={tmp_path / 'store'}",
                         "train.seed=7"), out_dir=tmp_path / "other", show_progress=False).fit()


def test_int8_teacher(finished_run, tmp_path):
    """distill.teacher_int8: the teacher's linears become Int8Linear (W8A8), its head stays float."""
    from fastlm.distill.config import DistillSection
    from fastlm.distill.teacher import load_teacher
    from fastlm.nn import Int8Linear

    teacher_dir, _ = finished_run
    section = DistillSection(teacher=str(teacher_dir), teacher_int8=True)
    tok = teacher_dir / "tokenizer.json"
    teacher = load_teacher(section, tok, 320, torch.device("cpu"))
    assert any(isinstance(m, Int8Linear) for m in teacher.modules())
    assert not isinstance(teacher.lm_head, Int8Linear) and not any(p.requires_grad for p in teacher.parameters())
    full = load_teacher(DistillSection(teacher=str(teacher_dir)), tok, 320, torch.device("cpu"))
    batch = torch.randint(0, 320, (2, 32))
    with torch.no_grad():
        a, b = teacher(batch), full(batch)
    assert 0 < (a - b).abs().max() < 0.1 * b.abs().max()  # quantized: close, not equal
    summary = Trainer(_student(teacher_dir, "distill.teacher_int8=true"), out_dir=tmp_path / "s",
                      show_progress=False).fit()
    assert summary["val_ppl"] < 1e4


def test_hugging_face_checkpoint_teacher(finished_run, tmp_path):
    """A teacher exported as a Hugging Face checkpoint gives the same distillation loss as its fastlm run."""
    from fastlm.distill.config import DistillSection
    from fastlm.distill.teacher import load_teacher
    from fastlm.train.export import export_run

    teacher_dir, _ = finished_run
    hf = export_run(teacher_dir, tmp_path / "hf")
    tok = teacher_dir / "tokenizer.json"
    a = load_teacher(DistillSection(teacher=str(hf)), tok, 320, torch.device("cpu"))
    b = load_teacher(DistillSection(teacher=str(teacher_dir)), tok, 320, torch.device("cpu"))
    batch = torch.randint(0, 320, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(a(batch), b(batch), rtol=1e-4, atol=1e-4)
    summary = Trainer(_student(hf), out_dir=tmp_path / "s", show_progress=False).fit()
    assert summary["val_ppl"] < 1e4
