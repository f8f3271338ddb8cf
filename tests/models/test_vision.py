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


def _rope2d_reference(x: torch.Tensor, grid: int, theta: float) -> torch.Tensor:
    """2-D RoPE written independently, as complex rotations in float64: pair j = (x_j, x_{j + D/2}) turns by
    row * f_j (first D/4 pairs) or column * f_{j - D/4} (the rest), f_i = theta^(-4i/D); [CLS] is not turned."""
    d = x.shape[-1]
    z = torch.complex(x[..., :d // 2].double(), x[..., d // 2:].double())
    f = theta ** (-4.0 * torch.arange(d // 4, dtype=torch.float64) / d)
    out = z.clone()
    for n in range(grid * grid):
        row, col = n // grid, n % grid
        angle = torch.cat([row * f, col * f])
        out[:, 1 + n] = z[:, 1 + n] * torch.polar(torch.ones_like(angle), angle)[None, :]
    return torch.cat([out.real, out.imag], dim=-1)


@pytest.mark.parametrize("grid,head_dim,dtype", [(3, 8, torch.float32), (4, 16, torch.float32),
                                                  (5, 12, torch.float64)])
def test_rope2d_equals_a_plain_reference(grid, head_dim, dtype):
    from fastlm import ops
    from fastlm.models.vision import rope2d_cos_sin

    torch.manual_seed(0)
    q = torch.randn(2, 1 + grid * grid, 3, head_dim, dtype=dtype)
    k = torch.randn(2, 1 + grid * grid, 3, head_dim, dtype=dtype)
    cos, sin = rope2d_cos_sin(grid, head_dim, 100.0)
    got_q, got_k = ops.rope(q, k, cos, sin)  # the fused op the encoder's attention calls
    want_q = torch.stack([_rope2d_reference(q[:, :, h], grid, 100.0) for h in range(3)], dim=2)
    torch.testing.assert_close(got_q.double(), want_q, atol=1e-5, rtol=1e-5)
    assert torch.equal(got_k[:, 0], k[:, 0])  # [CLS] keeps its vector


def test_rope2d_scores_depend_on_the_offset_only():
    """Translation equivariance of RoPE: q.k after rotation is the same for two patch pairs with the same
    row and column offsets, and differs for another offset."""
    from fastlm import ops
    from fastlm.models.vision import rope2d_cos_sin

    torch.manual_seed(0)
    grid, d = 6, 16
    cos, sin = rope2d_cos_sin(grid, d, 100.0)
    q0, k0 = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    t = 1 + grid * grid
    q, k = ops.rope(q0.expand(1, t, 1, d).contiguous(), k0.expand(1, t, 1, d).contiguous(), cos.double(), sin.double())
    q, k = q[0, 1:, 0], k[0, 1:, 0]

    def score(a, b):  # query at cell a, key at cell b, cells (row, col)
        return q[a[0] * grid + a[1]] @ k[b[0] * grid + b[1]]

    for shift in [(1, 0), (0, 2), (3, 1)]:
        for a, b in [((0, 0), (2, 1)), ((1, 2), (0, 0)), ((2, 2), (2, 2))]:
            moved = [(x[0] + shift[0], x[1] + shift[1]) for x in (a, b)]
            torch.testing.assert_close(score(*moved), score(a, b), atol=1e-6, rtol=0)  # fp32 angles
    assert abs(score((0, 0), (1, 0)) - score((0, 0), (0, 1))) > 1e-3  # rows and columns are told apart


def test_rope2d_encoder_has_no_position_table_and_reads_positions():
    torch.manual_seed(0)
    cfg = VisionConfig(image_size=16, patch_size=4, d_model=32, n_layer=2, n_head=2, d_ff=64, positions="rope2d")
    model = VisionEncoder(cfg)
    assert model.pos_emb is None and "pos_emb" not in model.state_dict()
    pixels = torch.randn(2, 3, 16, 16)
    hidden = model(pixels)
    # swapping two patches of the image moves their tokens and changes the rest (positions are seen)
    swapped = pixels.clone()
    swapped[:, :, 0:4, 0:4], swapped[:, :, 12:16, 12:16] = pixels[:, :, 12:16, 12:16], pixels[:, :, 0:4, 0:4]
    assert not torch.allclose(model(swapped)[:, 0], hidden[:, 0], atol=1e-4)
    model.pool(hidden).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ValueError, match=r"model.n_head = 4: expected a head size \(d_model / n_head = 6\)"):
        VisionConfig(d_model=24, n_head=4, positions="rope2d").validate()
    with pytest.raises(ValueError, match="model.positions = 'sincos': expected one of learned, rope2d"):
        VisionConfig(positions="sincos").validate()
