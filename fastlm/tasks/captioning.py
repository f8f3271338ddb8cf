"""Image captioning and visual question answering: a ViT (fastlm.models.VisionEncoder) read by a GPT
through a LLaVA-style projector (fastlm.models.multimodal.ImageToText); loss on the caption only.

    [task]
    train = "train.jsonl"     # {"image": "images/1.png", "caption": "..."} (paths relative to the file),
                              # or "demo:captioning" (synthetic shapes drawn with Pillow, exact captions)
    question_field = ""       # e.g. "question": visual question answering (the question is the prompt)
    image_size = 32           # images are resized to image_size x image_size RGB
    patch_size = 4
    vision_layers = 2         # the ViT's depth; its width and heads are [model]'s
    max_new_tokens = 24
    vision = {positions = "rope2d"}   # optional: the tower's vit-family keys (fastlm/tasks/vision_tower.py)
    [model]                   # the GPT decoder (family gpt2 | llama), or model.init_from a language-model run

Pixels are standardised per channel with the training images' mean and std (task_info.json).
Metrics: BLEU and chrF (sacrebleu), exact match, and for records with attributes (the synthetic set's
shape, colour, count, region, word) the share of captions that state each attribute correctly; next to
the same metrics of the majority caption of the training data (the baseline).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fastlm.data.images import COUNTS
from fastlm.models.multimodal import ImageToText
from fastlm.tasks.base import Task
from fastlm.tasks.datasets import DatasetError, read_records, text_value
from fastlm.tasks.vision_tower import ImageSection, load_image
from fastlm.train.errors import ConfigError

ATTRIBUTES = ("shape", "colour", "count", "region", "word")


@dataclass
class CaptioningSection(ImageSection):
    text_field: str = "caption"
    question_field: str = ""
    max_new_tokens: int = 24

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"task.max_new_tokens = {self.max_new_tokens}: expected a positive integer")
        super().validate()


class CaptioningModel(nn.Module):
    def __init__(self, model: ImageToText):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> dict:
        _, loss = self.model(batch["pixels"], batch["input_ids"], batch["labels"], return_logits=False)
        return {"loss": loss}


def states(caption: str, name: str, value) -> bool:
    """Whether a caption states attribute `name` = value (the synthetic set's wording)."""
    words = caption.lower().replace(",", " ").split()
    if name == "count":
        return 1 <= int(value) <= len(COUNTS) and COUNTS[int(value) - 1] in words
    if name == "shape":
        return value in words or value + "s" in words
    if name == "word":
        return f"word {value}" in " ".join(words)
    return str(value) in words


class CaptioningTask(Task):
    name = "captioning"
    Section = CaptioningSection

    def read_split(self, tc, path: Path, info) -> list[dict]:
        t = tc.task
        required = (t.image_field, t.text_field) + ((t.question_field,) if t.question_field else ())
        out = []
        for r in read_records(path, required):
            image = Path(text_value(r, t.image_field))
            image = image if image.is_absolute() else Path(path).parent / image
            try:
                pixels = load_image(image, t.pixels_shape[1], t.pixels_shape[0])
            except OSError as e:
                raise DatasetError(f"{r.where}: cannot read image {image}: {e}") from None
            attributes = {k: v for k, v in r.fields.items() if k in ATTRIBUTES}
            out.append({"image": str(image), "pixels": pixels, "caption": " ".join(text_value(r, t.text_field).split()),
                        "question": text_value(r, t.question_field) if t.question_field else "",
                        "attributes": attributes})
        return out

    def make_info(self, tc, records) -> dict:
        # Pixels are standardised per channel with the training images' statistics (as image processors do):
        # raw [0, 1] pixels leave the image features nearly alike across images, and the decoder then learns
        # the captions' language long before it reads the image.
        pixels = torch.stack([r["pixels"] for r in records])
        return {"majority_caption": Counter(r["caption"] for r in records).most_common(1)[0][0],
                "pixel_mean": pixels.mean((0, 2, 3)).tolist(), "pixel_std": pixels.std((0, 2, 3)).clamp(min=1e-3).tolist()}

    def tokenizer_texts(self, records):
        return [r["caption"] for r in records] + [r["question"] for r in records if r["question"]]

    def build_body(self, tc):
        from fastlm.tasks.backbone import build_backbone

        if tc.config.model.is_encoder:
            raise ConfigError(f"model.family = {tc.config.model.family!r}: captioning needs a GPT decoder "
                              f"(gpt2 or llama)")
        return build_backbone(tc)

    def build_model(self, tc, body, info) -> nn.Module:
        try:
            return CaptioningModel(ImageToText(tc.task.tower(body.config.d_model, body.config.n_head), body))
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def encode(self, tc, records, tok, info) -> list[dict]:
        from fastlm.data.tokenizer import find_eos_id

        eos = find_eos_id(tok)
        self._tokenizer = tok
        mean, std = (torch.tensor(info[k])[:, None, None] for k in ("pixel_mean", "pixel_std"))
        out = []
        for r in records:
            prompt = [eos] + (tok.encode(r["question"], add_special_tokens=False).ids if r["question"] else [])
            target = tok.encode(r["caption"], add_special_tokens=False).ids + [eos]
            out.append({"pixels": (r["pixels"] - mean) / std, "prompt": prompt, "target": target, "eos": eos,
                        "caption": r["caption"], "image": r["image"], "attributes": r["attributes"]})
        return out

    def collate(self, examples) -> dict:
        width = max(len(e["prompt"]) + len(e["target"]) for e in examples)
        ids = torch.full((len(examples), width), examples[0]["eos"], dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        for i, e in enumerate(examples):
            p, t = e["prompt"], e["target"]
            ids[i, :len(p) + len(t)] = torch.tensor(p + t)
            labels[i, len(p):len(p) + len(t)] = torch.tensor(t)  # the caption only, not the prompt
        return {"pixels": torch.stack([e["pixels"] for e in examples]), "input_ids": ids, "labels": labels}

    @torch.no_grad()
    def evaluate(self, model, examples, info, device, autocast, batch_size, tc=None):
        was_training = model.training
        model.eval()
        loss, n, hyps = 0.0, 0, []
        image_to_text = model.model
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            batch = {k: v.to(device) for k, v in self.collate(chunk).items()}
            with autocast:
                loss, n = loss + model(batch)["loss"].item() * len(chunk), n + len(chunk)
                for j in range(0, len(chunk)):  # prompts differ in length with questions: one at a time
                    e = chunk[j]
                    out = image_to_text.generate(batch["pixels"][j:j + 1], torch.tensor([e["prompt"]], device=device),
                                                 tc.task.max_new_tokens, eos_token_id=e["eos"])[0, len(e["prompt"]):]
                    ids = out.tolist()
                    ids = ids[:ids.index(e["eos"])] if e["eos"] in ids else ids
                    hyps.append(self._tokenizer.decode(ids).strip())
        model.train(was_training)
        refs = [e["caption"] for e in examples]
        result = {"loss": loss / max(n, 1), "examples": len(examples), **caption_scores(hyps, examples)}
        majority = [info["majority_caption"]] * len(examples)
        result.update({f"baseline_{k}": v for k, v in caption_scores(majority, examples).items()})
        predictions = [{"image": e["image"], "reference": r, "prediction": h} for e, r, h in zip(examples, refs, hyps)]
        return result, predictions


def caption_scores(hyps: list[str], examples: list[dict]) -> dict:
    """BLEU, chrF, exact match and per-attribute accuracy of captions against the examples'."""
    from fastlm.eval.metrics import bleu, chrf

    refs = [e["caption"] for e in examples]
    out = {"bleu": bleu(hyps, refs), "chrf": chrf(hyps, refs),
           "exact_match": sum(h == r for h, r in zip(hyps, refs)) / max(len(refs), 1)}
    for name in ATTRIBUTES:
        scored = [(h, e["attributes"][name]) for h, e in zip(hyps, examples) if name in e["attributes"]]
        if scored:
            out[f"{name}_accuracy"] = sum(states(h, name, v) for h, v in scored) / len(scored)
    return out
