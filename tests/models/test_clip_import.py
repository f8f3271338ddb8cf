"""A whole transformers CLIPModel imported into ContrastiveImageText: the same similarity logits and loss."""
from __future__ import annotations

import pytest
import torch

from fastlm.models.hf_clip import clip_from_hf

transformers = pytest.importorskip("transformers")


def _clip(act="quick_gelu"):
    torch.manual_seed(0)
    text = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=16, hidden_act=act, eos_token_id=98, pad_token_id=1, bos_token_id=0)
    vision = dict(image_size=16, patch_size=4, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=96, hidden_act=act)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
    return model


def _batch(n=5, t=9):
    ids = torch.randint(2, 98, (n, t))
    mask = torch.ones(n, t, dtype=torch.long)
    for i, length in enumerate([9, 4, 7, 2, 9][:n]):  # the EOS last, then padding (CLIP's tokenizer layout)
        ids[i, length - 1] = 98
        ids[i, length:] = 1
        mask[i, length:] = 0
    return torch.randn(n, 3, 16, 16), ids, mask


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_clip_similarity_and_loss_equal_transformers(act):
    hf = _clip(act)
    ours = clip_from_hf(hf).eval()
    pixels, ids, mask = _batch()
    with torch.no_grad():
        out = hf(input_ids=ids, pixel_values=pixels, attention_mask=mask, return_loss=True)
        got = ours.similarity(pixels, ids, mask)
        loss = ours(pixels, ids, mask)
    torch.testing.assert_close(got, out.logits_per_image, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss, out.loss, atol=1e-5, rtol=1e-4)
    assert not hasattr(ours.text, "lm_head") or ours.text.lm_head is None


def test_a_config_without_weights_and_a_non_clip_model_are_refused():
    hf = _clip()
    with pytest.raises(ValueError, match="needs the state_dict"):
        clip_from_hf(hf.config)
    vit = transformers.ViTModel(transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32,
                                                       num_hidden_layers=1, num_attention_heads=2,
                                                       intermediate_size=64))
    with pytest.raises(ValueError, match="expected a CLIPModel"):
        clip_from_hf(vit)
