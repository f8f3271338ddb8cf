"""Image classification: a ViT ([model] family = "vit", fastlm.models.VisionEncoder) and a linear head on
its pooled vector (the [CLS] token's, or the patches' mean with model.pool = "mean").

    [task]
    train = "train.jsonl"     # {"image": "images/1.png", "label": "cat"} (paths relative to the file), or
                              # "demo:captioning" with label_field = "shape" | "colour" | "count" | "region"
    label_field = "label"
    [model]
    family = "vit"            # image_size, patch_size, channels, d_model, n_layer, n_head, positions, pool, ...

Images are resized to model.image_size (grey with model.channels = 1) and standardised per channel with the
training images' mean and std (task_info.json). Metrics: accuracy and macro-F1 (f1_macro) on the validation split,
next to the majority label's accuracy (the baseline).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastlm.models.vision import VisionEncoder
from fastlm.nn import Linear
from fastlm.tasks.base import DataFiles, Task
from fastlm.tasks.datasets import DatasetError, label_value, read_records, text_value
from fastlm.tasks.vision_tower import load_image
from fastlm.train.errors import ConfigError


@dataclass
class ImageClassificationSection(DataFiles):
    image_field: str = "image"
    label_field: str = "label"


class ImageClassifier(nn.Module):
    def __init__(self, vision: VisionEncoder, num_labels: int):
        super().__init__()
        self.vision = vision
        self.head = Linear(vision.config.d_model, num_labels)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.vision.pool(self.vision(pixels)))

    def forward(self, batch: dict) -> dict:
        logits = self.logits(batch["pixels"])
        return {"loss": F.cross_entropy(logits.float(), batch["labels"]), "logits": logits}


def vit_section(tc):
    m = tc.config.model
    if m.family != "vit":
        raise ConfigError(f"model.family = {m.family!r}: image_classification trains a vision encoder "
                          f"(model.family = \"vit\")")
    return m


class ImageClassificationTask(Task):
    name = "image_classification"
    Section = ImageClassificationSection
    uses_tokenizer = False

    def read_split(self, tc, path: Path, info) -> list[dict]:
        t, m = tc.task, vit_section(tc)
        known = (lambda label: label in info["labels"]) if info is not None else None
        out = []
        for r in read_records(path, (t.image_field, t.label_field)):
            label = label_value(r, t.label_field, known, "not among the training labels")
            image = Path(text_value(r, t.image_field))
            image = image if image.is_absolute() else Path(path).parent / image
            try:
                pixels = load_image(image, m.image_size, m.channels)
            except OSError as e:
                raise DatasetError(f"{r.where}: cannot read image {image}: {e}") from None
            out.append({"image": str(image), "pixels": pixels, "label": label})
        return out

    def make_info(self, tc, records) -> dict:
        pixels = torch.stack([r["pixels"] for r in records])
        labels = Counter(r["label"] for r in records)
        return {"labels": sorted(labels), "majority_label": labels.most_common(1)[0][0],
                "pixel_mean": pixels.mean((0, 2, 3)).tolist(), "pixel_std": pixels.std((0, 2, 3)).clamp(min=1e-3).tolist()}

    def tokenizer_texts(self, records):
        return None  # pixels only

    def build_body(self, tc):
        m = vit_section(tc)
        if m.init_from:
            raise ConfigError("model.init_from: not yet available for image_classification (the ViT trains from "
                              "scratch; fastlm.models.hf_vision imports a transformers ViT in Python)")
        return VisionEncoder(m.architecture()), None

    def build_model(self, tc, body, info) -> nn.Module:
        return ImageClassifier(body, len(info["labels"]))

    def encode(self, tc, records, tok, info) -> list[dict]:
        index = {label: i for i, label in enumerate(info["labels"])}
        mean, std = (torch.tensor(info[k])[:, None, None] for k in ("pixel_mean", "pixel_std"))
        return [{"pixels": (r["pixels"] - mean) / std, "label": index[r["label"]], "image": r["image"]}
                for r in records]

    def collate(self, examples) -> dict:
        return {"pixels": torch.stack([e["pixels"] for e in examples]),
                "labels": torch.tensor([e["label"] for e in examples])}

    @torch.no_grad()
    def evaluate(self, model, examples, info, device, autocast, batch_size, tc=None):
        from fastlm.eval.metrics import f1

        was_training = model.training
        model.eval()
        loss, predicted = 0.0, []
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            batch = {k: v.to(device) for k, v in self.collate(chunk).items()}
            with autocast:
                out = model(batch)
            loss += out["loss"].item() * len(chunk)
            predicted += out["logits"].argmax(-1).tolist()
        model.train(was_training)
        gold = [e["label"] for e in examples]
        majority = info["labels"].index(info["majority_label"])
        n = max(len(examples), 1)
        result = {"loss": loss / n, "examples": len(examples),
                  "accuracy": sum(p == g for p, g in zip(predicted, gold)) / n,
                  "f1_macro": f1(gold, predicted, average="macro", labels=list(range(len(info["labels"])))),
                  "baseline_accuracy": sum(g == majority for g in gold) / n}
        labels = info["labels"]
        predictions = [{"image": e["image"], "label": labels[g], "prediction": labels[p]}
                       for e, g, p in zip(examples, gold, predicted)]
        return result, predictions
