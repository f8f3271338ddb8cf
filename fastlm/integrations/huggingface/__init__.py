"""fastlm kernels inside Hugging Face transformers models: one call, before or after the model is built.

    from fastlm.integrations.huggingface import apply_fastlm
    apply_fastlm(family="llama")            # patch the LLaMA modeling classes, then build models as usual
    model = AutoModelForCausalLM.from_config(config)
    apply_fastlm(model)                     # or patch one built model's modules
    AutoModelForCausalLM.from_pretrained(path, attn_implementation="fastlm")   # attention alone

Supported families: llama, mistral, qwen2 (RMSNorm, SwiGLU MLP, RoPE, attention, fused linear
cross-entropy), gpt2 (LayerNorm, attention, fused linear cross-entropy), bert (LayerNorm,
attention, masked-LM cross-entropy). unapply_fastlm() undoes a patch; fastlm_patched() is the
context-manager form. Patching twice is harmless.
"""
from fastlm.integrations.huggingface.attention import fastlm_attention_forward, register_attention
from fastlm.integrations.huggingface.patch import FAMILIES, apply_fastlm, fastlm_patched, unapply_fastlm

__all__ = ["apply_fastlm", "unapply_fastlm", "fastlm_patched", "register_attention", "fastlm_attention_forward",
           "FAMILIES"]
