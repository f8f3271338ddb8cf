"""VisionEncoder against Hugging Face ViT and CLIP vision towers (random weights), and its own checks."""
from __future__ import annotations

import pytest
import torch

from fastlm.models.hf_vision import vision_from_hf
from fastlm.models.vision import VisionConfig, VisionEncoder, patches

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("image,patch,channels", [(32, 8, 3), (24, 4, 1), (30, 6, 3)])
def test_vit_equals_transformers(image, patch, channels):
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=image, patch_size=patch, num_channels=channels, hidden_size=48,
                                 num_hidden_layers=2, num_attention_heads=3, intermediate_size=96)
    hf = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    ours = vision_from_hf(hf).eval()
    pixels = torch.randn(3, channels, image, image)
    with torch.no_grad():
        want = hf(pixel_values=pixels).last_hidden_state
        got = ours(pixels)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_clip_vision_tower_equals_transformers():
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=96, hidden_act="quick_gelu")
    hf = transformers.CLIPVisionModel(cfg).eval()
    ours = vision_from_hf(hf).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = hf(pixel_values=pixels)
        hidden = ours(pixels)
    torch.testing.assert_close(hidden, out.last_hidden_state, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ours.pool(hidden), out.pooler_output, atol=2e-5, rtol=1e-4)


def test_patches_are_conv2d_order():
    x = torch.randn(2, 3, 12, 12)
    conv = torch.nn.Conv2d(3, 5, kernel_size=4, stride=4)
    want = conv(x).flatten(2).transpose(1, 2)
    got = patches(x, 4) @ conv.weight.reshape(5, -1).T + conv.bias
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_gradients_flow_and_bad_input_is_named():
    model = VisionEncoder(VisionConfig(image_size=16, patch_size=4, d_model=32, n_layer=1, n_head=2, d_ff=64,
                                       pool="mean"))
    pixels = torch.randn(2, 3, 16, 16)
    model.pool(model(pixels)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ValueError, match=r"expected pixels of shape \(B, 3, 16, 16\)"):
        model(torch.randn(2, 3, 15, 16))
    with pytest.raises(ValueError, match="model.image_size = 30: expected a multiple of model.patch_size = 8"):
        VisionConfig(image_size=30, patch_size=8).validate()


def test_vit_checkpoint_names_of_transformers_4_load_too():
    """The Hub's ViT checkpoints (transformers 4 names: encoder.layer.i.attention.attention.query, ...)."""
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64)
    hf = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    renames = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
               "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense",
               "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    old = {}
    for key, value in hf.state_dict().items():
        if key.startswith("layers."):
            _, i, rest = key.split(".", 2)
            for new, was in renames.items():
                rest = rest.replace(new, was)
            key = f"encoder.layer.{i}.{rest}"
        old["vit." + key] = value
    ours = vision_from_hf(cfg.to_dict(), old).eval()
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels), hf(pixel_values=pixels).last_hidden_state, atol=2e-5, rtol=1e-4)
