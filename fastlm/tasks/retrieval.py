"""Image-text retrieval: CLIP-style towers (fastlm.models.multimodal.ContrastiveImageText), a ViT and the
[model] encoder, trained with the chunked symmetric InfoNCE loss; scored by recall@1/5 both ways.

    [task]
    train = "train.jsonl"     # {"image": "images/1.png", "caption": "..."}, or "demo:captioning"
    image_size = 32
    patch_size = 4
    vision_layers = 2         # the ViT's depth; its width and heads are [model]'s
    vision = {positions = "rope2d"}   # optional: the tower's vit-family keys (fastlm/tasks/vision_tower.py)
    embed_dim = 128           # the shared embedding space
    [model]                   # the text encoder: family bert | roberta | albert

Under data parallelism every rank's features are gathered (with their gradients), so the loss is the
global batch's: each image is contrasted with every caption of the step. Pixels are standardised with the
training images' per-channel mean and std. Metrics on the validation split: recall@1 and recall@5 of
image -> text and text -> image among all its pairs (a hit: an item with the same caption), next to
random retrieval's expected recall.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fastlm.models.multimodal import ContrastiveImageText
from fastlm.tasks.base import Task
from fastlm.tasks.captioning import CaptioningTask
from fastlm.tasks.vision_tower import ImageSection
from fastlm.train.errors import ConfigError


@dataclass
class RetrievalSection(ImageSection):
    text_field: str = "caption"
    embed_dim: int = 128
    question_field: str = ""  # (shared reader with captioning; unused here)

    def validate(self) -> None:
        if self.embed_dim < 1:
            raise ConfigError(f"task.embed_dim = {self.embed_dim}: expected a positive integer")
        super().validate()


class RetrievalModel(nn.Module):
    def __init__(self, model: ContrastiveImageText):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> dict:
        from fastlm.parallel.mesh import current_mesh

        mesh = current_mesh()
        group = mesh.dp_group if mesh is not None and mesh.dp > 1 else None
        return {"loss": self.model(batch["pixels"], batch["input_ids"], batch["attention_mask"], group=group)}


class RetrievalTask(Task):
    name = "image_text_retrieval"
    Section = RetrievalSection
    _reader = CaptioningTask()

    def read_split(self, tc, path: Path, info) -> list[dict]:
        return self._reader.read_split(tc, path, info)

    def make_info(self, tc, records) -> dict:
        info = self._reader.make_info(tc, records)
        return {"pixel_mean": info["pixel_mean"], "pixel_std": info["pixel_std"]}

    def tokenizer_texts(self, records):
        return [r["caption"] for r in records]

    def build_body(self, tc):
        from fastlm.tasks.backbone import build_backbone

        if not tc.config.model.is_encoder:
            raise ConfigError(f"model.family = {tc.config.model.family!r}: the retrieval text tower is an encoder "
                              f"(bert, roberta or albert)")
        return build_backbone(tc)

    def build_model(self, tc, body, info) -> nn.Module:
        t, c = tc.task, body.config
        body.pooler = None  # the text's vector is its first token's state, projected: no pooler to train
        return RetrievalModel(ContrastiveImageText(t.tower(c.d_model, c.n_head), body, embed_dim=t.embed_dim))

    def encode(self, tc, records, tok, info) -> list[dict]:
        from fastlm.data.tokenizer import find_eos_id

        eos, width = find_eos_id(tok), tc.config.data.seq_len
        mean, std = (torch.tensor(info[k])[:, None, None] for k in ("pixel_mean", "pixel_std"))
        self._pad = getattr(tc.config.model, "pad_token_id", 0) or 0
        out = []
        for r in records:  # a leading [CLS]-like token whose state is the text's vector (as classification does)
            ids = [eos] + tok.encode(r["caption"], add_special_tokens=False).ids[:width - 1]
            out.append({"pixels": (r["pixels"] - mean) / std, "ids": ids, "caption": r["caption"], "image": r["image"]})
        return out

    def collate(self, examples) -> dict:
        width = max(len(e["ids"]) for e in examples)
        pad = getattr(self, "_pad", 0)
        ids = torch.full((len(examples), width), pad, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            ids[i, :len(e["ids"])] = torch.tensor(e["ids"])
            mask[i, :len(e["ids"])] = 1
        return {"pixels": torch.stack([e["pixels"] for e in examples]), "input_ids": ids, "attention_mask": mask}

    @torch.no_grad()
    def evaluate(self, model, examples, info, device, autocast, batch_size, tc=None):
        was_training = model.training
        model.eval()
        clip = model.model
        images, texts = [], []
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in self.collate(examples[i:i + batch_size]).items()}
            with autocast:
                images.append(clip.image_features(batch["pixels"]).float())
                texts.append(clip.text_features(batch["input_ids"], batch["attention_mask"]).float())
        model.train(was_training)
        image, text = torch.cat(images), torch.cat(texts)
        scores = recall_at(image @ text.T, [e["caption"] for e in examples])
        from fastlm.ops.contrastive import contrastive_loss

        # the contrastive loss of the whole validation split as one batch (so it depends on its size)
        loss = contrastive_loss(image, text, clip.logit_scale.detach().float().clamp(max=clip.max_log_scale)).item()
        captions = [e["caption"] for e in examples]
        result = {"loss": loss, "examples": len(examples), **scores,
                  **{f"random_recall@{k}": random_recall(captions, k) for k in (1, 5)}}
        top = (image @ text.T).argmax(-1).tolist()
        predictions = [{"image": e["image"], "caption": e["caption"], "retrieved": examples[j]["caption"]}
                       for e, j in zip(examples, top)]
        return result, predictions


def random_recall(captions: list[str], k: int) -> float:
    """The expected recall@k of retrieving k items at random (1 - C(N - m, k) / C(N, k), m: the items with the
    query's caption), the baseline the demo compares against."""
    from collections import Counter
    from math import comb

    n, counts = len(captions), Counter(captions)
    k = min(k, n)
    return sum(1 - comb(n - counts[c], k) / comb(n, k) for c in captions) / n


def recall_at(similarity: torch.Tensor, captions: list[str], ks=(1, 5)) -> dict:
    """recall@k of image -> text and text -> image; a hit is a retrieved item with the same caption (the
    synthetic set repeats captions: any picture of "two red circles at the top" is a right answer)."""
    n = similarity.shape[0]
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    label = torch.tensor([ids[c] for c in captions])
    same = label[:, None] == label[None, :]
    out = {}
    for k in ks:
        k_eff = min(k, n)
        i2t = similarity.topk(k_eff, dim=1).indices
        t2i = similarity.T.topk(k_eff, dim=1).indices
        out[f"image_to_text_recall@{k}"] = same.gather(1, i2t).any(1).float().mean().item()
        out[f"text_to_image_recall@{k}"] = same.gather(1, t2i).any(1).float().mean().item()
    return out
