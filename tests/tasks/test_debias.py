"""Adversarial debiasing: the gradient-reversal layer, the gradients of a debiased step against a
hand-written reference, the adversary learning, config errors, and (small, deterministic) the
equalized-odds gap of a planted group correlation shrinking with debiasing."""
import json
import random

import pytest
import torch
import torch.nn.functional as F

from fastlm.models import GPT, GPTConfig
from fastlm.tasks import get_task
from fastlm.tasks.classification import SequenceClassifier
from fastlm.tasks.config import task_config_from_dict
from fastlm.tasks.debias import DebiasedClassifier, debiased_task_loss, grad_reverse
from fastlm.tasks.loop import finetune
from fastlm.train.errors import ConfigError
from tests.tasks.task_helpers import tiny_config, write_jsonl

TASK = get_task("classification")


def test_gradient_reversal_flips_and_scales_the_gradient():
    torch.manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, dtype=torch.float64)
    plain = torch.autograd.grad((x @ w).sin().sum(), x)[0]
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)  # identity forward
    reversed_ = torch.autograd.grad((y @ w).sin().sum(), x)[0]
    torch.testing.assert_close(reversed_, -0.7 * plain, rtol=0, atol=1e-15)
    # and it is not the derivative of its forward: gradcheck (numerical vs analytic) must disagree
    assert not torch.autograd.gradcheck(lambda t: grad_reverse(t, 0.7), (x,), raise_exception=False)
    assert torch.autograd.gradcheck(lambda t: t * 1.0, (x,))  # (the check itself works)


def _debiased_model_and_batch(weight, encoder=False):
    torch.manual_seed(1)
    if encoder:
        from fastlm.models.encoder import Encoder, EncoderConfig

        body = Encoder(EncoderConfig(family="bert", vocab_size=40, n_layer=1, n_head=2, d_model=16, max_seq_len=16),
                       add_pooler=True)
    else:
        body = GPT(GPTConfig(family="llama", vocab_size=40, n_layer=1, n_head=2, n_kv_head=2, d_model=16,
                             max_seq_len=16))
    model = DebiasedClassifier(SequenceClassifier(body, 2), 16, 2, 3, weight).double()
    ids = torch.randint(1, 40, (6, 5))
    mask = torch.ones_like(ids)
    mask[2, 3:] = 0
    batch = {"input_ids": ids * mask, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0, 1, 0]),
             "groups": torch.tensor([0, 2, 1, -1, 2, 0])}  # -1: a group the adversary does not know
    return model, batch


@pytest.mark.parametrize("encoder", [False, True])
def test_debiased_step_gradients_match_the_reference(encoder):
    weight = 0.6
    model, batch = _debiased_model_and_batch(weight, encoder)
    model.train()
    debiased_task_loss(model, batch).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    # reference: the task loss and the adversary's loss on the (not reversed) pooled vector, by hand
    model.zero_grad()
    out = model.classifier(batch)
    known = batch["groups"] >= 0
    logits = model.adversary(out["pooled"], batch["labels"])
    adv = F.cross_entropy(logits[known], batch["groups"][known])
    adv_params = [p for n, p in model.named_parameters() if n.startswith("adversary.")]
    body_params = [p for n, p in model.named_parameters() if n.startswith("classifier.")]
    g_task = torch.autograd.grad(out["loss"], body_params, retain_graph=True, allow_unused=True)
    g_adv_body = torch.autograd.grad(adv, body_params, retain_graph=True, allow_unused=True)
    g_adv_own = torch.autograd.grad(adv, adv_params)
    names = [n for n, _ in model.named_parameters()]
    body_names = [n for n in names if n.startswith("classifier.")]
    for name, gt, ga in zip(body_names, g_task, g_adv_body):
        expected = (gt if gt is not None else 0) - weight * (ga if ga is not None else 0)
        # (the backbone's fused ops accumulate in float32: float32-level tolerances)
        torch.testing.assert_close(got[name], torch.as_tensor(expected, dtype=torch.float64).expand_as(got[name]),
                                   rtol=1e-4, atol=1e-6)
    for name, ga in zip([n for n in names if n.startswith("adversary.")], g_adv_own):
        torch.testing.assert_close(got[name], ga, rtol=1e-4, atol=1e-6)  # the adversary descends its own loss
    assert max(g.abs().max() for g in g_adv_own) > 1e-2
    # the reversed term reaches the encoder, far above those tolerances
    assert max(weight * g.abs().max() for g in g_adv_body if g is not None) > 1e-3
    # evaluation uses the classifier alone
    model.eval()
    assert "group_logits" not in model(batch)


# ---------------------------------------------------------------- the planted correlation

GROUP_WORDS = {"pos": "sun sky star moon light bright warm day".split(),
               "neg": "rain fog cloud storm dark cold grey night".split()}


def planted_records(n, seed, correlation=0.8, clarity=0.75):
    """Binary labels whose words are ambiguous (each from the label's list with probability
    `clarity`), a group agreeing with the label with probability `correlation`, and a token
    revealing the group."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        other = "neg" if label == "pos" else "pos"
        words = [rng.choice(GROUP_WORDS[label if rng.random() < clarity else other]) for _ in range(3)]
        usual = "a" if label == "pos" else "b"
        group = usual if rng.random() < correlation else ("b" if usual == "a" else "a")
        out.append({"text": f"team{group} " + " ".join(words), "label": label, "group": group})
    return out


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    d = tmp_path_factory.mktemp("planted")
    return (write_jsonl(d / "train.jsonl", planted_records(800, 0)),
            write_jsonl(d / "val.jsonl", planted_records(400, 1)))


def _run(tmp_path, planted, name, **train):
    raw = tiny_config(*planted, steps=120, global_batch_size=32, micro_batch_size=32, lr=3e-3, **train)
    raw["task"]["group_field"] = "group"
    raw["model"]["d_model"] = 32
    return finetune(TASK, task_config_from_dict(raw, TASK.Section), tmp_path / name, show_progress=False)


def test_debiasing_shrinks_the_equalized_odds_gap_of_a_planted_correlation(tmp_path, planted):
    plain = _run(tmp_path, planted, "plain")
    debiased = _run(tmp_path, planted, "debiased", debias="adversarial", debias_weight=1.0)
    gap_before = plain["metrics"]["fairness_equalized_odds_difference"]
    gap_after = debiased["metrics"]["fairness_equalized_odds_difference"]
    assert gap_before > 0.3  # the classifier leans on the group token (measured: 0.45)
    assert gap_after < 0.6 * gap_before  # measured: 0.12
    assert debiased["metrics"]["accuracy"] > plain["metrics"]["accuracy"] - 0.05  # at a small cost
    # the adversary was trained: with a negligible reversal it learns at least what the label says
    # of the group (80% agree; an untrained adversary is at chance, 50%), and the debiased encoder
    # leaves it less than that
    weak = _run(tmp_path, planted, "weak", debias="adversarial", debias_weight=1e-6)
    assert weak["metrics"]["adversary_group_accuracy"] > 0.75
    assert debiased["metrics"]["adversary_group_accuracy"] < weak["metrics"]["adversary_group_accuracy"] - 0.1
    # the run directory has the fairness report, and the weights (adversary included) load again
    for name in ("fairness.json", "fairness.png"):
        assert (tmp_path / "debiased" / name).is_file()
    report = json.loads((tmp_path / "debiased" / "fairness.json").read_text())
    assert report["gaps"]["equalized_odds_difference"]["value"] == pytest.approx(gap_after)
    from fastlm.tasks.loop import evaluate_run

    again = evaluate_run(TASK, tmp_path / "debiased")
    assert again["metrics"]["fairness_equalized_odds_difference"] == pytest.approx(gap_after)


# ---------------------------------------------------------------- config errors

def test_config_errors(tmp_path, planted):
    raw = tiny_config(*planted)
    with pytest.raises(ConfigError, match='train.debias = "fair"'):
        task_config_from_dict(raw, TASK.Section, ["train.debias=fair"])
    with pytest.raises(ConfigError, match="train.debias_weight = 0"):
        task_config_from_dict(raw, TASK.Section, ["train.debias_weight=0"])
    tc = task_config_from_dict(raw, TASK.Section, ["train.debias=adversarial"])
    with pytest.raises(ConfigError, match="needs task.group_field"):
        finetune(TASK, tc, tmp_path / "a", show_progress=False)
    tc = task_config_from_dict(raw, TASK.Section, ["train.debias=adversarial", "task.group_field=group",
                                                   "task.model=maxent"])
    with pytest.raises(ConfigError, match="train.debias: not available with task.model"):
        finetune(TASK, tc, tmp_path / "b", show_progress=False)
    gen = get_task("generation")
    with pytest.raises(ConfigError, match="only for the classification task"):
        finetune(gen, task_config_from_dict(tiny_config("x.jsonl"), gen.Section, ["train.debias=adversarial"]),
                 tmp_path / "c", show_progress=False)
    from fastlm.train.config import load_config
    from fastlm.train.trainer import Trainer

    with pytest.raises(ConfigError, match="only for fine-tuning a classifier"):
        Trainer(load_config("tiny", ["train.debias=adversarial"]), tmp_path / "d")


# ---------------------------------------------------------------- data parallel

def _dp_run(rank, world, raw, out):
    torch.set_num_threads(1)
    result = finetune(TASK, task_config_from_dict(raw, TASK.Section), out, show_progress=False)
    return {k: v.detach().clone() for k, v in result["model"].state_dict().items()}


def test_debiasing_on_two_processes_matches_one(tmp_path):
    """The adversary's parameters are data-parallel like the rest (their gradients are reduced)."""
    from tests.parallel.dist_helpers import run_world

    train = write_jsonl(tmp_path / "t.jsonl", planted_records(64, 2))
    raw = tiny_config(train, steps=3, global_batch_size=16, micro_batch_size=4, grad_clip=0.0,
                      debias="adversarial")
    raw["task"]["group_field"] = "group"
    single = _dp_run(0, 1, raw, tmp_path / "one")
    assert any(name.startswith("adversary.") for name in single)
    ranks = run_world(_dp_run, 2, raw, str(tmp_path / "two"), timeout=240)
    for name, want in single.items():
        torch.testing.assert_close(ranks[0][name], want, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(ranks[1][name], ranks[0][name], rtol=0, atol=0, msg=name)
