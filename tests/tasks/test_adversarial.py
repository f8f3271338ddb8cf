"""Adversarial training: the perturbation's norm and direction, the training step's gradients,
and (slow) robustness gained on the demo task."""
import pytest
import torch
from torch import nn

from fastlm.models import GPT, GPTConfig
from fastlm.tasks.adversarial import adversarial_backward, attack, perturbed, project_per_token
from fastlm.tasks.classification import SequenceClassifier


def _model_and_batch(seed=0, encoder=False):
    torch.manual_seed(seed)
    if encoder:
        from fastlm.models.encoder import Encoder, EncoderConfig

        body = Encoder(EncoderConfig(family="bert", vocab_size=50, n_layer=1, n_head=2, d_model=16, max_seq_len=16),
                       add_pooler=True)
    else:
        body = GPT(GPTConfig(family="llama", vocab_size=50, n_layer=1, n_head=2, n_kv_head=2, d_model=16,
                             max_seq_len=16))
    model = SequenceClassifier(body, 3).double()
    ids = torch.randint(1, 50, (4, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # padded rows
    mask[3, 3:] = 0
    ids = ids * mask
    return model, {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])}


def _embedding_grad(model, batch):
    """d loss / d (embedding output), computed by hand with a zero perturbation that requires grad."""
    emb = model.body.tok_emb
    zero = {}

    def hook(mod, inp, out):
        zero["d"] = torch.zeros_like(out, requires_grad=True)
        return out + zero["d"]

    h = emb.register_forward_hook(hook)
    loss = model(batch)["loss"]
    h.remove()
    return torch.autograd.grad(loss, zero["d"])[0]


@pytest.mark.parametrize("encoder", [False, True])
def test_fgm_has_the_configured_norm_and_the_gradient_direction(encoder):
    model, batch = _model_and_batch(encoder=encoder)
    g = _embedding_grad(model, batch)
    eps = 0.37
    with perturbed(model.body.tok_emb) as hook:
        delta = attack(lambda: model(batch)["loss"], hook, "fgm", eps)
    assert delta.shape == g.shape
    gn = g.norm(dim=-1)
    moved = gn > 0
    assert moved.any()
    # every token with a gradient moves by exactly epsilon, along its gradient
    torch.testing.assert_close(delta.norm(dim=-1)[moved].double(), torch.full_like(gn[moved], eps), rtol=1e-5, atol=1e-6)
    cos = nn.functional.cosine_similarity(delta.double()[moved], g[moved], dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-5)
    # padding gets no gradient, so it does not move (a decoder's pads come after every real token)
    assert (delta.norm(dim=-1)[~moved] == 0).all()
    if not encoder:
        assert not moved[1, 5:].any() and not moved[3, 3:].any()
    # and the loss rises
    with torch.no_grad(), perturbed(model.body.tok_emb) as hook:
        clean = model(batch)["loss"]
        hook.delta = delta
        assert model(batch)["loss"] > clean


def test_pgd_stays_in_the_ball_and_beats_fgm():
    model, batch = _model_and_batch(seed=1)
    eps = 0.5
    losses = {}
    for method, steps in (("fgm", 1), ("pgd", 1), ("pgd", 8)):
        with perturbed(model.body.tok_emb) as hook:
            delta = attack(lambda: model(batch)["loss"], hook, method, eps, steps,
                           alpha=eps if steps == 1 else None)
            assert (delta.norm(dim=-1) <= eps * (1 + 1e-5)).all()
            hook.delta = delta
            with torch.no_grad():
                losses[(method, steps)] = model(batch)["loss"].item()
            if steps == 1 and method == "pgd":
                ref = delta
    with perturbed(model.body.tok_emb) as hook:
        fgm = attack(lambda: model(batch)["loss"], hook, "fgm", eps)
    torch.testing.assert_close(ref, fgm)  # one PGD step of size epsilon from zero is FGM
    assert losses[("pgd", 8)] >= losses[("fgm", 1)] - 1e-9


def test_projection():
    d = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    torch.testing.assert_close(project_per_token(d, 1.0), torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))


@pytest.mark.parametrize("method", ["fgm", "pgd"])
def test_adversarial_backward_gradients(method):
    """The parameters get d(clean + adversarial loss), the adversarial loss at the attack's delta."""
    model, batch = _model_and_batch(seed=2)
    emb = model.body.tok_emb
    torch.manual_seed(0)
    clean, adv = adversarial_backward(lambda: model(batch)["loss"], emb, method, 0.3, steps=3, scale=0.5)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with perturbed(emb) as hook:
        delta = attack(lambda: model(batch)["loss"], hook, method, 0.3, 3)
        want_clean = model(batch)["loss"]
        hook.delta = delta
        want_adv = model(batch)["loss"]
    (0.5 * (want_clean + want_adv)).backward()
    assert adv > clean
    torch.testing.assert_close(clean, want_clean.detach())
    torch.testing.assert_close(adv, want_adv.detach())
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, msg=n)


# ---------------------------------------------------------------- through the fine-tuning loop

def _langid_config(seed: int, adversarial: str, steps: int = 300, epsilon: float = 0.02) -> dict:
    return {"task": {"train": "demo:langid"},
            "model": {"family": "llama", "n_layer": 1, "n_head": 2, "n_kv_head": 2, "d_model": 64},
            "data": {"vocab_size": 512, "seq_len": 48},
            "train": {"steps": steps, "global_batch_size": 32, "micro_batch_size": 32, "lr": 3e-3,
                      "warmup_steps": 10, "min_lr": 3e-4, "weight_decay": 0.0, "log_every": 10, "eval_every": 0,
                      "precision": "fp32", "seed": seed, "adversarial": adversarial,
                      "adversarial_epsilon": epsilon, "adversarial_steps": 2},
            "checkpoint": {"every": 0}}


@pytest.mark.parametrize("method", ["fgm", "pgd"])
def test_adversarial_finetuning_runs_and_logs(tmp_path, method):
    import json

    from fastlm.tasks import get_task
    from fastlm.tasks.config import task_config_from_dict
    from fastlm.tasks.loop import finetune
    from tests.tasks.task_helpers import synthetic_records, tiny_config, write_jsonl

    task = get_task("classification")
    raw = tiny_config(write_jsonl(tmp_path / "t.jsonl", synthetic_records(64)), steps=3, adversarial=method,
                      adversarial_epsilon=0.05, micro_batch_size=8)
    finetune(task, task_config_from_dict(raw, task.Section), tmp_path / "r", show_progress=False)
    logged = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    assert len(steps) == 3 and all(r["adversarial_loss"] > r["loss"] for r in steps)


@pytest.mark.slow
def test_adversarial_training_keeps_more_accuracy_under_attack(tmp_path):
    """Language ID (the demo task), 3 seeds: FGM-trained classifiers keep more accuracy under a PGD
    attack of the training epsilon than classifiers trained without, by a margin well above the
    spread over seeds. (About 5 minutes on a busy 2-core machine; measured margins: 6-9 points.)"""
    from fastlm.data.tokenizer import load_tokenizer
    from fastlm.tasks import get_task
    from fastlm.tasks.adversarial import attacked_accuracy
    from fastlm.tasks.config import task_config_from_dict
    from fastlm.tasks.demo import LANGID_LANGUAGES, locale_dir
    from fastlm.tasks.loop import finetune, read_task_data

    if not all(any((locale_dir() / lang / "LC_MESSAGES").glob("*.mo")) for lang in LANGID_LANGUAGES):
        pytest.skip("no gettext catalogs for the language-ID demo on this machine")
    task = get_task("classification")
    eps = 0.02
    gains, clean = [], []
    for seed in range(3):
        robust = {}
        for method in ("none", "fgm"):
            tc = task_config_from_dict(_langid_config(seed, method, epsilon=eps), task.Section)
            out = tmp_path / f"{method}-{seed}"
            result = finetune(task, tc, out, show_progress=False)
            _, val, info = read_task_data(task, tc)
            examples = task.encode(tc, val, load_tokenizer(out / "tokenizer.json"), info)
            robust[method] = attacked_accuracy(task, result["model"], examples, eps, "pgd", steps=5)
            clean.append(result["metrics"]["accuracy"])
        gains.append(robust["fgm"] - robust["none"])
    mean = sum(gains) / len(gains)
    spread = (sum((g - mean) ** 2 for g in gains) / (len(gains) - 1)) ** 0.5
    assert min(clean) > 0.75  # both kinds of model learned the task
    assert all(g > 0 for g in gains), gains
    assert mean > 0.03 and mean > 2 * spread / len(gains) ** 0.5, (gains, mean, spread)


def test_language_model_training_rejects_adversarial():
    from fastlm.train import Trainer, load_config
    from fastlm.train.errors import ConfigError

    with pytest.raises(ConfigError, match="train.adversarial = \"fgm\": only for fine-tuning"):
        Trainer(load_config("tiny", ["train.adversarial=fgm"]))
    with pytest.raises(ConfigError, match="train.adversarial_epsilon"):
        load_config("tiny", ["train.adversarial=pgd", "train.adversarial_epsilon=0"])
