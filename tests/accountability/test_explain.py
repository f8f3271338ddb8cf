"""fastlm explain: integrated gradients (completeness, and equality with Captum's layer integrated
gradients), recomputed attention probabilities (they reproduce each attention layer's output),
attention rollout (rows sum to 1), LM and classification runs, the files and the CLI."""
from __future__ import annotations

import pytest
import torch

from fastlm.accountability.explain import (
    attention_modules,
    attention_probs,
    attention_rollout,
    capture_attention,
    explain,
    explain_run,
    load_explained,
)
from fastlm.cli import main

TEXT = "The class of an object is"


def _completeness(r):
    return abs(r["attribution_sum"] - r["delta"]) / abs(r["delta"])


def test_lm_integrated_gradients_are_complete_within_1_percent(lm_run):
    ex = load_explained(lm_run, TEXT, "cpu")
    r = explain(ex)                                   # 50 steps, the default
    assert abs(r["delta"]) > 1e-3
    assert _completeness(r) < 0.01
    assert r["completeness_error"] == pytest.approx(_completeness(r))
    assert len(r["integrated_gradients"]) == len(ex.ids) == len(r["rollout"])
    # f(input) is the explained log-probability, of the model's most likely next token
    assert r["f_input"] == pytest.approx(r["log_prob"], abs=1e-5)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_classification_integrated_gradients_are_complete(classifier_runs, family):
    ex = load_explained(classifier_runs[family], "cat dog the red of", "cpu")
    r = explain(ex)
    assert ex.kind == "classification" and ex.label(r["target"]) in ("animal", "color", "number")
    assert _completeness(r) < 0.01
    assert ex.position() == (0 if family == "bert" else len(ex.ids) - 1)


def test_integrated_gradients_equal_captums(lm_run):
    captum = pytest.importorskip("captum.attr")
    ex = load_explained(lm_run, TEXT, "cpu")
    ours = explain(ex, steps=20)
    ids = torch.tensor([ex.ids])
    lig = captum.LayerIntegratedGradients(lambda x: ex.f(x), ex.embedding)
    theirs = lig.attribute(ids, baselines=torch.full_like(ids, ex.baseline_id), n_steps=21,
                           method="riemann_trapezoid").sum(-1)[0]
    # Captum's trapezoid gives n points the weights 1/n (halved at the ends), summing to (n - 1)/n;
    # the trapezoid rule on n points spaced 1/(n - 1) weighs them 1/(n - 1): the same sum rescaled.
    theirs = theirs * 21 / 20
    torch.testing.assert_close(torch.tensor(ours["integrated_gradients"]), theirs.float(), rtol=1e-4, atol=1e-6)


def _check_probs_reproduce_outputs(model, ids, call):
    """Each attention layer's recomputed probabilities, times its values, through its output projection,
    give the layer's actual output (computed by the fused kernels)."""
    seen = []

    def hook(module, args, kwargs, out):
        x, rope = args[0], (args[1] if len(args) > 1 else kwargs.get("rope"))
        p = attention_probs(module, x, rope)
        b, t, _ = x.shape
        hd, h, hkv = module.head_dim, module.n_head, module.n_kv_head
        v = module.qkv(x)[..., (h + hkv) * hd:].view(b, t, hkv, hd).transpose(1, 2).repeat_interleave(h // hkv, 1)
        y = module.proj((p @ v.float()).transpose(1, 2).reshape(b, t, h * hd))
        torch.testing.assert_close(y, out, rtol=1e-4, atol=1e-5)
        assert torch.allclose(p.sum(-1), torch.ones(()), atol=1e-5)
        seen.append(module)

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in attention_modules(model)]
    try:
        with torch.no_grad():
            call(ids)
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen) == len(attention_modules(model)) > 0


def test_recomputed_attention_reproduces_the_fused_layers(lm_run, classifier_runs):
    ex = load_explained(lm_run, TEXT, "cpu")                          # LLaMA: RoPE, grouped kv heads, causal
    _check_probs_reproduce_outputs(ex.model, torch.tensor([ex.ids]), ex.log_probs)
    enc = load_explained(classifier_runs["bert"], "red blue the", "cpu")  # bidirectional
    _check_probs_reproduce_outputs(enc.model, torch.tensor([enc.ids]), enc.log_probs)


def test_rollout_rows_sum_to_one_and_one_layer_is_half_attention_half_identity(lm_run):
    ex = load_explained(lm_run, TEXT, "cpu")
    with torch.no_grad(), capture_attention(ex.model) as probs:
        ex.log_probs(torch.tensor([ex.ids]))
    assert len(probs) == len(attention_modules(ex.model))
    rollout = attention_rollout(probs)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(len(ex.ids)))
    assert (rollout >= 0).all() and torch.equal(rollout.triu(1), torch.zeros_like(rollout))  # causal
    one = attention_rollout(probs[:1])
    torch.testing.assert_close(one, 0.5 * probs[0][0].mean(0) + 0.5 * torch.eye(len(ex.ids)))
    manual = torch.eye(len(ex.ids))
    for p in probs:
        manual = (0.5 * p[0].mean(0) + 0.5 * torch.eye(len(ex.ids))) @ manual
    torch.testing.assert_close(rollout, manual)


def test_cli_writes_html_png_json(lm_run, tmp_path, capsys):
    out = tmp_path / "ex"
    assert main(["explain", str(lm_run), "--text", TEXT, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "attributions sum to" in printed
    page = (out / "explain.html").read_text()
    assert page.count("<span") == 2 * len(load_explained(lm_run, TEXT, "cpu").ids)
    assert "Integrated gradients" in page and "Attention rollout" in page
    assert (out / "explain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import json

    r = json.loads((out / "explain.json").read_text())
    assert sum(r["rollout"]) == pytest.approx(1.0, abs=1e-5)
    assert not list(out.glob(".*tmp*"))


def test_explain_a_chosen_target_and_one_line_errors(lm_run, tmp_path, capsys):
    r = explain_run(lm_run, TEXT, target=7, out_dir=tmp_path)
    assert r["target"] == 7 and abs(r["attribution_sum"] - r["delta"]) <= 0.01 * abs(r["delta"]) + 1e-6
    for args, message in [(["--text", ""], "--text is empty"),
                          (["--text", "x " * 100], "longer than the model's context"),
                          (["--text", TEXT, "--target", "100000"], "--target 100000: expected 0 .."),
                          (["--text", TEXT, "--steps", "0"], "--steps must be >= 1")]:
        assert main(["explain", str(lm_run), *args, "--out", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_gpt2_family_with_learned_positions_and_tied_embeddings(tmp_path, fastlm_cache):
    """GPT-2 style: absolute position embeddings (outside the attributed token embeddings), a head tied
    to the token embedding (the replaced embedding output must not change the head's weights)."""
    from fastlm.train import Trainer
    from tests.train.train_helpers import micro_config

    config = micro_config("model.family=gpt2", "model.n_kv_head=4", "model.tie_embeddings=true", "train.steps=3")
    Trainer(config, out_dir=tmp_path / "gpt2", show_progress=False).fit()
    ex = load_explained(tmp_path / "gpt2", TEXT, "cpu")
    r = explain(ex)
    assert _completeness(r) < 0.01
    _check_probs_reproduce_outputs(ex.model, torch.tensor([ex.ids]), ex.log_probs)
