"""A nanoGPT-style baseline for the training benchmarks: the GPT-2 that Karpathy's nanoGPT trains, as
its model.py builds it, in plain PyTorch, written here (nanoGPT is a repository, not a package).

What makes it nanoGPT's and not fastlm's: torch.nn.Linear / LayerNorm / GELU (exact) modules, one
fused q/k/v Linear split into heads, torch's scaled_dot_product_attention with is_causal, learned
positions, the LM head tied to the token embedding, F.cross_entropy over the full logits, and
nanoGPT's optimizer setup (AdamW, weight decay on 2-D weights only, betas (0.9, 0.95), fused only on
CUDA, so on the CPU torch's default AdamW step). On the CPU nanoGPT trains in fp32 (its autocast
context is CUDA-only) and its train.py compiles the model unless told `--compile=False`; the
benchmarks run it both ways.

Parameter names follow fastlm's GPT (family "gpt2") so that `load_state_dict` of a fastlm model's
weights works: the test checks both compute the same logits, i.e. the benchmark compares one model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Attention(nn.Module):
    def __init__(self, d_model: int, n_head: int, bias: bool):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _MLP(nn.Module):
    def __init__(self, d_model: int, bias: bool):
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model, bias=bias)
        self.proj = nn.Linear(4 * d_model, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class _Block(nn.Module):
    def __init__(self, d_model: int, n_head: int, bias: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = _Attention(d_model, n_head, bias)
        self.norm2 = nn.LayerNorm(d_model, bias=bias)
        self.mlp = _MLP(d_model, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class NanoGPT(nn.Module):
    """GPT-2 as nanoGPT trains it (no dropout: the benchmarks train with dropout 0)."""

    def __init__(self, vocab_size: int, n_layer: int, n_head: int, d_model: int, max_seq_len: int,
                 bias: bool = True):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model = {d_model} is not a multiple of n_head = {n_head}")
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_seq_len, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_head, bias) for _ in range(n_layer))
        self.norm = nn.LayerNorm(d_model, bias=bias)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * n_layer) ** 0.5)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, labels: torch.Tensor | None = None):
        t = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.norm(x), self.tok_emb.weight)  # tied LM head
        if labels is None:
            return logits, None
        # next-token loss, as fastlm's GPT computes it from labels = the input ids
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        return logits, loss


def configure_optimizer(model: nn.Module, lr: float, weight_decay: float, device_type: str) -> torch.optim.AdamW:
    """nanoGPT's AdamW: decay on tensors of 2 or more dimensions, none on biases and norms; fused on CUDA only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    extra = {"fused": True} if device_type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), **extra)


def from_fastlm(model: nn.Module, cfg) -> NanoGPT:
    """The nanoGPT model holding a fastlm GPT's weights (`cfg` its resolved GPTConfig: family "gpt2",
    exact GELU, MLP of 4 d_model, tied head; anything else is not nanoGPT's architecture)."""
    wanted = dict(family="gpt2", activation="gelu", d_ff=4 * cfg.d_model, tie_embeddings=True,
                  n_kv_head=cfg.n_head, head_dim=cfg.d_model // cfg.n_head)
    differs = [f"{k} = {getattr(cfg, k)!r} (nanoGPT: {v!r})" for k, v in wanted.items() if getattr(cfg, k) != v]
    if differs:
        raise ValueError("not nanoGPT's architecture: " + ", ".join(differs))
    out = NanoGPT(cfg.vocab_size, cfg.n_layer, cfg.n_head, cfg.d_model, cfg.max_seq_len, bias=cfg.bias)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to tok_emb
    out.load_state_dict(state, strict=True)
    return out
