"""VisionEncoder: a ViT from fastlm's own blocks (the non-causal fastlm.nn.Block GPT and the encoders run).

    encoder = VisionEncoder(VisionConfig(image_size=32, patch_size=8, d_model=128, n_layer=4, n_head=4))
    hidden = encoder(pixels)                 # pixels (B, C, H, W) -> (B, 1 + patches, d_model), [CLS] first
    pooled = encoder.pool(hidden)            # (B, d_model): the [CLS] token's, or the mean of the patches'

The patch embedding is one GEMM: the image is cut into non-overlapping p x p patches by a view and a
permute (no im2col copy beyond the one reshape) and each flattened (C, p, p) patch goes through one
Linear, which is exactly a Conv2d with kernel = stride = p (Hugging Face ViT's weights load as they are,
fastlm.models.hf_vision). Positions (config.positions) are learned, one per patch plus [CLS], or 2-D
RoPE ("rope2d", rope2d_cos_sin): no position parameters, q and k rotated by the patch's row and column in
each attention, through the same fused fastlm.ops.rope as the decoders' 1-D RoPE. Blocks are pre-norm
(LayerNorm, GELU MLP), as ViT's. `model.family = "vit"` is this config as a [model] section.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastlm.models.config import DictConfig
from fastlm.nn import Block, LayerNorm, Layers, Linear
from fastlm.nn.activations import ACTIVATIONS
from fastlm.nn.init import init_weights_
from fastlm.nn.rope import rope_cos_sin

POOLS = ("cls", "mean")
FINAL_NORMS = ("all", "pooled")
POSITIONS = ("learned", "rope2d")


@dataclass
class VisionConfig(DictConfig):
    image_size: int = 224
    patch_size: int = 16
    channels: int = 3
    d_model: int = 768
    n_layer: int = 12
    n_head: int = 12
    d_ff: int = 3072
    norm_eps: float = 1e-12
    activation: str = "gelu"
    dropout: float = 0.0
    pool: str = "cls"                # cls | mean (of the patch tokens)
    init_std: float = 0.02
    patch_bias: bool = True          # CLIP's patch embedding has none
    embed_norm: bool = False         # CLIP's pre_layrnorm: a LayerNorm on the embeddings before the blocks
    final_norm: str = "all"          # all (ViT: every token) | pooled (CLIP's post_layernorm: the pooled vector only)
    positions: str = "learned"       # learned (ViT, CLIP) | rope2d (2-D RoPE: row and column halves of the head)
    rope_theta: float = 100.0        # rope2d's base (a grid is a few dozen positions a side, not thousands)
    family: str = "vit"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def validate(self, prefix: str = "model") -> None:
        """ValueError naming the key as `prefix.key` (model.patch_size, task.vision.patch_size, ...)."""
        def bad(name: str, expected: str):
            raise ValueError(f"{prefix}.{name} = {getattr(self, name)!r}: expected {expected}")

        if self.family != "vit":
            bad("family", "'vit'")
        for name in ("image_size", "patch_size", "channels", "d_model", "n_layer", "n_head", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(name, "a positive integer")
        if self.image_size % self.patch_size:
            bad("image_size", f"a multiple of {prefix}.patch_size = {self.patch_size}")
        if self.d_model % self.n_head:
            bad("d_model", f"a multiple of {prefix}.n_head = {self.n_head}")
        if self.activation not in ACTIVATIONS:
            bad("activation", f"one of {', '.join(sorted(ACTIVATIONS))}")
        if self.pool not in POOLS:
            bad("pool", f"one of {', '.join(POOLS)}")
        if self.final_norm not in FINAL_NORMS:
            bad("final_norm", f"one of {', '.join(FINAL_NORMS)}")
        if self.positions not in POSITIONS:
            bad("positions", f"one of {', '.join(POSITIONS)}")
        if self.positions == "rope2d" and (self.d_model // self.n_head) % 4:
            bad("n_head", f"a head size (d_model / n_head = {self.d_model // self.n_head}) that is a multiple of 4 "
                          f"for positions = 'rope2d' (a row and a column half, each rotated in pairs)")
        if not isinstance(self.rope_theta, (int, float)) or isinstance(self.rope_theta, bool) or not self.rope_theta > 0:
            bad("rope_theta", "a positive number")
        if not 0 <= self.dropout < 1:
            bad("dropout", "a number in [0, 1)")


def patches(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C * p * p): row-major patches, each flattened in (C, p, p) order
    (a Conv2d weight's order)."""
    b, c, h, w = pixels.shape
    p = patch_size
    x = pixels.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def rope2d_cos_sin(grid: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (1 + grid * grid, head_dim // 2) of 2-D RoPE for fastlm.ops.rope: [CLS] first, then the patches
    row-major. Of the head_dim // 2 rotated pairs (i, i + head_dim / 2), the first half turn with the patch's
    row and the second half with its column, each with 1-D RoPE's frequencies of a head_dim / 2 head; so a
    query-key score depends on the two patches' row and column offsets only. [CLS] is not rotated."""
    cells = torch.arange(grid * grid, device=device)
    row_cos, row_sin = rope_cos_sin(cells // grid, head_dim // 2, theta)
    col_cos, col_sin = rope_cos_sin(cells % grid, head_dim // 2, theta)
    cos, sin = torch.cat([row_cos, col_cos], dim=-1), torch.cat([row_sin, col_sin], dim=-1)
    cls_cos, cls_sin = torch.ones_like(cos[:1]), torch.zeros_like(sin[:1])
    return torch.cat([cls_cos, cos]), torch.cat([cls_sin, sin])


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        self.patch_emb = Linear(c.channels * c.patch_size * c.patch_size, c.d_model, bias=c.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.d_model))
        learned = c.positions == "learned"
        self.pos_emb = nn.Parameter(torch.zeros(1, 1 + c.num_patches, c.d_model)) if learned else None
        self.emb_norm = LayerNorm(c.d_model, c.norm_eps) if c.embed_norm else None
        self.drop = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()
        self.blocks = Layers(
            Block(d_model=c.d_model, n_head=c.n_head, n_kv_head=c.n_head, head_dim=c.d_model // c.n_head,
                  d_ff=c.d_ff, norm="layernorm", norm_eps=c.norm_eps, activation=c.activation, bias=True,
                  dropout=c.dropout, layer_idx=i, causal=False)
            for i in range(c.n_layer))
        self.norm = LayerNorm(c.d_model, c.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights_(self, self.config.init_std)
        nn.init.trunc_normal_(self.cls_token, std=self.config.init_std)
        if self.pos_emb is not None:
            nn.init.trunc_normal_(self.pos_emb, std=self.config.init_std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        c = self.config
        if pixels.dim() != 4 or pixels.shape[1] != c.channels or pixels.shape[2] != c.image_size \
                or pixels.shape[3] != c.image_size:
            raise ValueError(f"VisionEncoder: expected pixels of shape (B, {c.channels}, {c.image_size}, "
                             f"{c.image_size}), got {tuple(pixels.shape)}")
        x = self.patch_emb(patches(pixels.to(self.patch_emb.weight.dtype), c.patch_size))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb.to(x.dtype)
        else:
            rope = rope2d_cos_sin(c.grid, c.d_model // c.n_head, c.rope_theta, x.device)
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        x = self.drop(x)
        for block in self.blocks.values():
            x = block(x, rope)
        return self.norm(x) if c.final_norm == "all" else x

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, d_model): the [CLS] token's hidden state, or the mean of the patches' (config.pool); with
        final_norm = "pooled" the final LayerNorm is applied here (CLIP's post_layernorm)."""
        pooled = hidden[:, 0] if self.config.pool == "cls" else hidden[:, 1:].mean(1)
        return self.norm(pooled) if self.config.final_norm == "pooled" else pooled
