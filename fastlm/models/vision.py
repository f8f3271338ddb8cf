"""VisionEncoder: a ViT from fastlm's own blocks (the non-causal fastlm.nn.Block GPT and the encoders run).

    encoder = VisionEncoder(VisionConfig(image_size=32, patch_size=8, d_model=128, n_layer=4, n_head=4))
    hidden = encoder(pixels)                 # pixels (B, C, H, W) -> (B, 1 + patches, d_model), [CLS] first
    pooled = encoder.pool(hidden)            # (B, d_model): the [CLS] token's, or the mean of the patches'

The patch embedding is one GEMM: the image is cut into non-overlapping p x p patches by a view and a
permute (no im2col copy beyond the one reshape) and each flattened (C, p, p) patch goes through one
Linear, which is exactly a Conv2d with kernel = stride = p (Hugging Face ViT's weights load as they are,
fastlm.models.hf_vision). Positions are learned, one per patch plus [CLS]. Blocks are pre-norm
(LayerNorm, GELU MLP), as ViT's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastlm.nn import Block, LayerNorm, Layers, Linear
from fastlm.nn.activations import ACTIVATIONS
from fastlm.nn.init import init_weights_

POOLS = ("cls", "mean")
FINAL_NORMS = ("all", "pooled")


@dataclass
class VisionConfig:
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
    family: str = "vit"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def validate(self) -> None:
        for name in ("image_size", "patch_size", "channels", "d_model", "n_layer", "n_head", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model.{name} = {value!r}: expected a positive integer")
        if self.image_size % self.patch_size:
            raise ValueError(f"model.image_size = {self.image_size}: expected a multiple of model.patch_size = "
                             f"{self.patch_size}")
        if self.d_model % self.n_head:
            raise ValueError(f"model.d_model = {self.d_model}: expected a multiple of model.n_head = {self.n_head}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.activation = {self.activation!r}: expected one of {', '.join(sorted(ACTIVATIONS))}")
        if self.pool not in POOLS:
            raise ValueError(f"model.pool = {self.pool!r}: expected one of {', '.join(POOLS)}")
        if self.final_norm not in FINAL_NORMS:
            raise ValueError(f"model.final_norm = {self.final_norm!r}: expected one of {', '.join(FINAL_NORMS)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout = {self.dropout!r}: expected a number in [0, 1)")


def patches(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C * p * p): row-major patches, each flattened in (C, p, p) order
    (a Conv2d weight's order)."""
    b, c, h, w = pixels.shape
    p = patch_size
    x = pixels.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        self.patch_emb = Linear(c.channels * c.patch_size * c.patch_size, c.d_model, bias=c.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.d_model))
        self.pos_emb = nn.Parameter(torch.zeros(1, 1 + c.num_patches, c.d_model))
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
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1) + self.pos_emb.to(x.dtype)
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        x = self.drop(x)
        for block in self.blocks.values():
            x = block(x)
        return self.norm(x) if c.final_norm == "all" else x

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, d_model): the [CLS] token's hidden state, or the mean of the patches' (config.pool); with
        final_norm = "pooled" the final LayerNorm is applied here (CLIP's post_layernorm)."""
        pooled = hidden[:, 0] if self.config.pool == "cls" else hidden[:, 1:].mean(1)
        return self.norm(pooled) if self.config.final_norm == "pooled" else pooled
