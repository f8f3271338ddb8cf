"""[distill] with an encoder student (masked-LM objective): the loss and gradients are the definition,
a whole run through `fastlm distill`, clear errors for a decoder / encoder mix."""
import pytest
import torch
import torch.nn.functional as F

from fastlm.cli import main
from fastlm.data.masking import MaskedBatch
from fastlm.ops import reference_distill as reference
from fastlm.train import ConfigError, Trainer, load_config
from fastlm.train.run import init_model_from

SMALL = ["data.builtin_modules=[]", "data.vocab_size=300", "data.seq_len=32", "model.d_model=32", "model.n_head=4",
         "model.n_layer=2", "model.dropout=0.0", "train.global_batch_size=4", "train.micro_batch_size=2",
         "train.precision=fp32", "train.eval_every=0", "train.eval_batches=2", "train.steps=3", "train.lr=1e-3",
         "train.warmup_steps=1", "train.min_lr=1e-4"]


def _sets(items):
    return [a for item in items for a in ("--set", item)]


@pytest.fixture(scope="module")
def encoder_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "bert"
    Trainer(load_config("bert-tiny", SMALL), out_dir=out, show_progress=False).fit()
    return out


def _student(teacher_dir, *extra):
    return [*SMALL, "model.n_layer=1", "model.family=roberta", "model.pad_token_id=1", f"distill.teacher={teacher_dir}",
            f"data.tokenizer={teacher_dir}/tokenizer.json", *extra]


def test_masked_lm_distillation_is_the_definition(encoder_teacher, tmp_path):
    keys = _student(encoder_teacher, "distill.loss=jsd", "distill.beta=0.3", "distill.temperature=2.0",
                    "distill.alpha=0.7", "distill.top_k=5")
    assert main(["distill", "bert-tiny", "--out", str(tmp_path / "s"), "--quiet", *_sets(keys)]) == 0
    assert "[distill]" in (tmp_path / "s" / "config.toml").read_text()
    trainer = Trainer(load_config("bert-tiny", keys), out_dir=tmp_path / "again", show_progress=False)
    trainer.fit()

    from fastlm.distill.training import Distillation
    from fastlm.parallel import parallelize

    student = trainer.model.train()
    pm = parallelize(student, None, trainer.config)
    distill = Distillation.setup(trainer.config, pm, encoder_teacher / "tokenizer.json", torch.device("cpu"))
    teacher, _ = init_model_from(encoder_teacher)
    teacher.eval()
    torch.manual_seed(0)
    ids = torch.randint(0, 300, (2, 32))
    labels = torch.full_like(ids, -100)
    where = torch.rand(ids.shape) < 0.3
    labels[where] = ids[where]
    ids = torch.where(where, torch.full_like(ids, 300), ids)  # the student and the teacher see the same [MASK]s
    got = distill.loss_of(pm.runner, MaskedBatch(ids, labels))
    params = [p for p in student.parameters() if p.requires_grad]
    got_grads = torch.autograd.grad(got, params)

    # The definition in float64: masked positions only, alpha * JSD(T=2, top-5 + tail) + (1 - alpha) * CE.
    s_logits = student(ids).double()[where]
    with torch.no_grad():
        t_logits = teacher(ids).double()[where]
    eye = torch.eye(s_logits.shape[-1], dtype=torch.float64)
    kd = reference.linear_distill_loss(s_logits, eye, t_logits, loss="jsd", beta=0.3, temperature=2.0,
                                       top_k=5).mean()
    want = 0.7 * kd + 0.3 * F.cross_entropy(s_logits, labels[where])
    want_grads = torch.autograd.grad(want, params)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-4, atol=1e-6)
    assert any(w.abs().max() > 0 for w in want_grads)


def test_decoder_teacher_with_encoder_student_is_a_clear_error(finished_run, encoder_teacher, tmp_path, capsys):
    gpt_dir, _ = finished_run
    assert main(["distill", "bert-tiny", "--out", str(tmp_path / "a"), "--quiet", *_sets(_student(gpt_dir, "data.vocab_size=320"))]) != 0
    assert "is a causal (decoder) language model, but the student is an encoder" in capsys.readouterr().err
    gpt_student = ["model.n_layer=1", f"distill.teacher={encoder_teacher}",
                   f"data.tokenizer={encoder_teacher}/tokenizer.json", *SMALL[:1], "data.seq_len=32", "train.steps=1"]
    assert main(["distill", "tiny", "--out", str(tmp_path / "b"), "--quiet", *_sets(gpt_student)]) != 0
    assert "is an encoder (masked LM), but the student is a causal GPT" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="sentence_order"):
        load_config("bert-tiny", _student(encoder_teacher, "data.sentence_order=true"))


def test_hugging_face_encoder_teacher(encoder_teacher, tmp_path):
    """An encoder teacher exported as a Hugging Face checkpoint gives the teacher logits of its fastlm run."""
    from fastlm.distill.config import DistillSection
    from fastlm.distill.teacher import load_teacher

    hf = tmp_path / "hf"
    assert main(["export", str(encoder_teacher), "--format", "hf", "--out", str(hf)]) == 0
    tok = encoder_teacher / "tokenizer.json"
    if not (hf / "tokenizer.json").is_file():
        (hf / "tokenizer.json").write_bytes(tok.read_bytes())
    a = load_teacher(DistillSection(teacher=str(hf)), tok, 303, torch.device("cpu"), encoder_student=True)
    b = load_teacher(DistillSection(teacher=str(encoder_teacher)), tok, 303, torch.device("cpu"), encoder_student=True)
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(a(ids), b(ids), rtol=1e-4, atol=1e-5)
