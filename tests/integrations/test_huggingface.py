"""apply_fastlm: a patched HF model computes what the unpatched one computes (logits, loss, gradients),
for each supported family, patched before building and on a built instance."""
import copy

import pytest
import torch

from fastlm.integrations.huggingface import FAMILIES, apply_fastlm, fastlm_patched, unapply_fastlm

from .hf_models import EXPECTED_OPS, _unpatch, build, config, model_class, op_calls  # noqa: F401

transformers = pytest.importorskip("transformers")
FAMILY_NAMES = list(FAMILIES)


def _batch(b=2, t=17):
    torch.manual_seed(1)
    ids = torch.randint(1, 257, (b, t))
    labels = ids.clone()
    labels[0, 3] = -100
    return ids, labels


def _run(model):
    """Eval logits and loss, then a training forward + backward: (logits, eval loss, train loss, grads)."""
    ids, labels = _batch()
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    model.train()  # training: causal LMs take the fused head + loss (no logits)
    train = model(input_ids=ids, labels=labels)
    train.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.logits, out.loss, train.loss.detach(), grads


def _assert_same(got, want, family, op_calls):
    torch.testing.assert_close(got[0], want[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got[1], want[1], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got[2], want[2], atol=2e-5, rtol=1e-5)
    assert got[3].keys() == want[3].keys()
    for name in want[3]:
        torch.testing.assert_close(got[3][name], want[3][name], atol=2e-5, rtol=1e-4, msg=name)
    expected = EXPECTED_OPS[family] | ({"linear_cross_entropy"} if family != "bert" else set())
    assert expected <= {name for name, n in op_calls.items() if n}, op_calls


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_patched_instance_matches_unpatched(family, op_calls):
    ref_model = build(family)
    model = copy.deepcopy(ref_model)
    want = _run(ref_model)
    assert not op_calls  # nothing patched yet
    assert apply_fastlm(model) is model
    assert isinstance(model, model_class(family))  # a subclass of the HF class: isinstance still holds
    assert model.state_dict().keys() == ref_model.state_dict().keys()
    _assert_same(_run(model), want, family, op_calls)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_patched_before_build_matches_unpatched(family, op_calls):
    want = _run(build(family))
    apply_fastlm(family=family)
    model = build(family)  # same seed, same weights: the patches change forwards only
    assert type(model) is model_class(family)
    _assert_same(_run(model), want, family, op_calls)
    unapply_fastlm()
    op_calls.clear()
    _run(build(family))
    assert not op_calls.get("rope") and not op_calls.get("rms_norm") and not op_calls.get("layer_norm")


def test_idempotent_and_unapply_instance(op_calls):
    model = build("llama")
    apply_fastlm(model)
    apply_fastlm(model)
    apply_fastlm(family="llama")  # class-level on top of instance-level: still one layer of patching
    assert type(model).__name__ == "FastlmLlamaForCausalLM"
    assert type(model.model.layers[0].mlp).__mro__[1] is transformers.models.llama.modeling_llama.LlamaMLP
    unapply_fastlm(model)
    unapply_fastlm()
    assert type(model) is transformers.LlamaForCausalLM
    assert type(model.model.norm) is transformers.models.llama.modeling_llama.LlamaRMSNorm
    assert model.config._attn_implementation == "sdpa"
    op_calls.clear()
    _run(model)
    assert sum(op_calls.values()) == 0


def test_options_select_what_is_patched(op_calls):
    model = apply_fastlm(build("llama"), attention=False, rope=False, swiglu=False, cross_entropy=False)
    _run(model)
    assert set(op_calls) == {"rms_norm"}
    assert model.config._attn_implementation == "sdpa"


def test_context_manager(op_calls):
    with fastlm_patched(family="qwen2"):
        _run(build("qwen2"))
    assert op_calls["rms_norm"] and op_calls["rope"]
    op_calls.clear()
    _run(build("qwen2"))
    assert sum(op_calls.values()) == 0


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_attn_implementation_fastlm(family, tmp_path, op_calls):
    from fastlm.integrations.huggingface import register_attention

    register_attention()
    ref = build(family).eval()
    ref.save_pretrained(tmp_path)  # safetensors, local
    model = model_class(family).from_pretrained(tmp_path, attn_implementation="fastlm").eval()
    assert model.config._attn_implementation == "fastlm"
    ids, _ = _batch()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits, atol=2e-5, rtol=1e-4)
        assert op_calls["attention"] == 2
        # A padding mask is not the fused kernel's case: fastlm.ops.attention runs torch SDPA for it.
        mask = torch.ones_like(ids)
        mask[1, :4] = 0
        op_calls.clear()
        got, want = model(input_ids=ids, attention_mask=mask).logits, ref(input_ids=ids, attention_mask=mask).logits
        assert op_calls["attention"] == 2
        torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=2e-5, rtol=1e-4)
    m2 = model_class(family)._from_config(config(family), attn_implementation="fastlm")
    assert m2.config._attn_implementation == "fastlm"


def test_generate_with_kv_cache_matches():
    ref = build("llama").eval()
    model = apply_fastlm(copy.deepcopy(ref))
    prompt = torch.randint(1, 257, (2, 5))
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(prompt, **kwargs), ref.generate(prompt, **kwargs))


def test_bad_arguments():
    with pytest.raises(ValueError, match="pass a model, or family="):
        apply_fastlm()
    with pytest.raises(ValueError, match="unknown family 'gpt5'"):
        apply_fastlm(family="gpt5")
    with pytest.raises(ValueError, match="not of a supported family"):
        apply_fastlm(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        apply_fastlm("llama")
    with pytest.raises(TypeError, match="rope must be True or False"):
        apply_fastlm(family="llama", rope="yes")
