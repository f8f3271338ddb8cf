"""Small random Hugging Face models of each supported family, built locally (no download)."""
import collections

import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB = 257


def config(family: str):
    common = dict(vocab_size=VOCAB, tie_word_embeddings=False)
    if family in ("llama", "mistral", "qwen2"):
        cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config}[family]
        return cls(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64, **common)
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0,
                                       embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, **common)
    return transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                   max_position_embeddings=64,
                                   **common)


def model_class(family: str):
    return {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM,
            "qwen2": transformers.Qwen2ForCausalLM, "gpt2": transformers.GPT2LMHeadModel,
            "bert": transformers.BertForMaskedLM}[family]


def build(family: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return model_class(family)(config(family), **kwargs)


OPS = ("rms_norm", "layer_norm", "rope", "swiglu", "attention", "cross_entropy", "linear_cross_entropy")


@pytest.fixture
def op_calls(monkeypatch):
    """Counts the calls of each fastlm op (proof that the patched model runs on them)."""
    import fastlm.ops as ops

    calls = collections.Counter()
    for name in OPS:
        real = getattr(ops, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(ops, name, counted)
    return calls


@pytest.fixture(autouse=True)
def _unpatch():
    from fastlm.integrations.huggingface import unapply_fastlm

    unapply_fastlm()
    yield
    unapply_fastlm()


# The fastlm ops each family's patched forward + backward must run.
EXPECTED_OPS = {
    "llama": {"rms_norm", "rope", "swiglu", "attention"},
    "mistral": {"rms_norm", "rope", "swiglu", "attention"},
    "qwen2": {"rms_norm", "rope", "swiglu", "attention"},
    "gpt2": {"layer_norm", "attention"},
    "bert": {"layer_norm", "attention", "cross_entropy"},
}
