"""Image + text models from fastlm's towers: LLaVA-style image-to-text, and CLIP-style contrastive pairs.

    model = ImageToText(VisionConfig(...), GPTConfig(...))
    logits, loss = model(pixels, input_ids, labels)            # loss on the text only (prompt: labels -100)
    ids = model.generate(pixels, prompt_ids, max_new_tokens=20)  # greedy, with the decoder's KV cache

    clip = ContrastiveImageText(VisionConfig(...), EncoderConfig(...), embed_dim=256)
    loss = clip(pixels, input_ids, attention_mask)             # symmetric InfoNCE, learned temperature

ImageToText: the vision encoder's patch tokens (the [CLS] token dropped, as LLaVA does) go through a
two-layer GELU projector into the decoder's width and are read by the GPT as a prefix of embeddings
(GPT.forward(prefix=...)): no loss is taken on the image positions, and labels of -100 mask the prompt.
ContrastiveImageText: the image's pooled vector and the text encoder's [CLS] vector (or a causal GPT text
tower's last real token's, as CLIP's; fastlm.models.hf_clip imports a transformers CLIPModel) are projected,
L2-normalised and scored by fastlm.ops.contrastive_loss (chunked: the B x B logits are never stored).
Under data parallelism (group given) the features of every rank are gathered with their gradients, so
the loss is that of the global batch, computed identically on every rank.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fastlm.models.config import GPTConfig
from fastlm.models.encoder import Encoder
from fastlm.models.encoder_config import EncoderConfig
from fastlm.models.gpt import GPT
from fastlm.models.vision import VisionConfig, VisionEncoder
from fastlm.nn import Linear
from fastlm.ops.contrastive import contrastive_loss


class ImageToText(nn.Module):
    def __init__(self, vision: VisionConfig, text: GPTConfig | GPT):
        """text: the decoder's config, or a built (e.g. pretrained) GPT to read the image with."""
        super().__init__()
        self.vision = VisionEncoder(vision)
        self.decoder = text if isinstance(text, GPT) else GPT(text)
        text = self.decoder.config
        # The GELU runs in the first GEMM's epilogue (fastlm.ops.matmul); the Identity keeps the state-dict
        # keys projector.0 / projector.2 of a Linear, GELU, Linear stack.
        self.projector = nn.Sequential(Linear(vision.d_model, text.d_model, activation="gelu"), nn.Identity(),
                                       Linear(text.d_model, text.d_model))
        if vision.num_patches >= text.max_seq_len:
            raise ValueError(f"{vision.num_patches} image patches leave no room for text in the decoder's "
                             f"max_seq_len = {text.max_seq_len}")

    def image_prefix(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, patches, text d_model): the projected patch tokens."""
        return self.projector(self.vision(pixels)[:, 1:])

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                return_logits: bool = True):
        """Logits over the image and text positions; (logits, loss) with labels (loss on the text only)."""
        return self.decoder(input_ids, labels, prefix=self.image_prefix(pixels), return_logits=return_logits)

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor, prompt_ids: torch.Tensor, max_new_tokens: int,
                 eos_token_id: int | None = None) -> torch.Tensor:
        """Greedy continuation of prompt_ids (B, T >= 1) after the image: (B, T + new) token ids."""
        prefix = self.image_prefix(pixels)
        b = prompt_ids.shape[0]
        room = self.decoder.config.max_seq_len - prefix.shape[1] - prompt_ids.shape[1]
        steps = min(max_new_tokens, room)
        if steps <= 0:
            return prompt_ids
        cache = self.decoder.make_kv_cache(b, self.decoder.config.max_seq_len, dtype=prefix.dtype)
        h = self.decoder.hidden_states(prompt_ids, cache, prefix=prefix)[:, -1]
        out, finished = prompt_ids, torch.zeros(b, dtype=torch.bool, device=prompt_ids.device)
        for i in range(steps):
            nxt = self.decoder.lm_head(h).argmax(-1)
            if eos_token_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
                finished |= nxt == eos_token_id
            out = torch.cat([out, nxt[:, None]], dim=1)
            if (eos_token_id is not None and bool(finished.all())) or i == steps - 1:
                break
            h = self.decoder.hidden_states(nxt[:, None], cache)[:, -1]
        return out


class ContrastiveImageText(nn.Module):
    def __init__(self, vision: VisionConfig, text: EncoderConfig | Encoder | GPT, embed_dim: int = 256,
                 init_temperature: float = 0.07, max_logit_scale: float = 100.0):
        """text: the text tower's config, or a built Encoder (its first token's state is the text's vector), or a
        built GPT without its lm_head (CLIP's causal text tower: its last real token's state is the vector)."""
        super().__init__()
        self.vision = VisionEncoder(vision)
        self.text = text if isinstance(text, (Encoder, GPT)) else Encoder(text)
        self.image_proj = Linear(vision.d_model, embed_dim, bias=False)
        self.text_proj = Linear(self.text.config.d_model, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log_scale = math.log(max_logit_scale)  # CLIP clips the learned scale at 100

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.vision.pool(self.vision(pixels))), dim=-1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(self.text, GPT):  # right-padded: with causal attention the last real token sees no padding
            hidden = self.text.hidden_states(input_ids)
            last = attention_mask.sum(1) - 1 if attention_mask is not None else \
                torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
            pooled = hidden[torch.arange(input_ids.shape[0], device=input_ids.device), last]
        else:
            pooled = self.text(input_ids, attention_mask)[:, 0]
        return F.normalize(self.text_proj(pooled), dim=-1)

    def similarity(self, pixels: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(images, texts) logits: the scaled cosine similarities (CLIP's logits_per_image)."""
        scale = self.logit_scale.clamp(max=self.max_log_scale).exp()
        return scale * self.image_features(pixels) @ self.text_features(input_ids, attention_mask).T

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                group=None, chunk_size: int = 1024) -> torch.Tensor:
        image, text = self.image_features(pixels), self.text_features(input_ids, attention_mask)
        if group is not None:
            image, text = gather_features(image, group), gather_features(text, group)
        return contrastive_loss(image, text, self.logit_scale.clamp(max=self.max_log_scale), chunk_size)


def gather_features(x: torch.Tensor, group) -> torch.Tensor:
    """Every rank's rows in rank order, with gradients flowing back to their owners (features, not logits).

    Each rank computes the same global loss; all_gather's backward sums the W copies' gradients, so a rank's
    parameter gradient is W times its share, and data parallelism's average gives the global gradient."""
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_nn

    if dist.get_world_size(group) == 1:
        return x
    return torch.cat(dist_nn.all_gather(x, group=group), dim=0)
