"""Image-text data: a synthetic, exactly captioned set drawn with Pillow, and a folder reader.

    examples = synthetic_examples(200, seed=0, image_size=32)    # [ImageText(pixels, caption, attributes)]
    write_image_dataset(examples, "data/shapes")                 # images/00000.png + captions.jsonl
    examples = read_image_dataset("data/shapes", image_size=32)  # a user's folder in the same layout

A synthetic image holds 1 to 3 shapes (circle, square, triangle) of one colour in one region of the
picture (left, right, top, bottom, centre), on a background of random grey, optionally with a word
rendered in it; its caption states all of it ("two red circles at the top, the word cat"), so a caption
can be checked attribute by attribute. Everything is a function of (seed, index): the same set on every
machine, no downloads.

A folder: `captions.jsonl` lines {"image": "relative/path.png", "caption": "..."} (more keys are kept as
attributes); a malformed line or an unreadable image stops with "FILE:LINE: what is wrong".
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastlm.train.errors import FastlmError

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (230, 200, 40),
           "purple": (150, 60, 190)}
REGIONS = ("left", "right", "top", "bottom", "centre")
COUNTS = ("one", "two", "three")
WORDS = ("cat", "sun", "map", "box", "key", "pen")


@dataclass
class ImageText:
    pixels: torch.Tensor                 # (3, H, W) float in [0, 1]
    caption: str
    attributes: dict = field(default_factory=dict)


def _region_box(region: str, size: int) -> tuple[int, int, int, int]:
    h = size // 2
    return {"left": (0, 0, h, size), "right": (h, 0, size, size), "top": (0, 0, size, h),
            "bottom": (0, h, size, size), "centre": (size // 4, size // 4, 3 * size // 4, 3 * size // 4)}[region]


def _draw_shape(draw, shape: str, box: tuple[int, int, int, int], colour) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)


def synthetic_image(index: int, seed: int = 0, image_size: int = 32, words: bool = True) -> ImageText:
    """Example `index` of the synthetic set of `seed` (a pure function of both)."""
    from PIL import Image, ImageDraw

    rng = random.Random(f"{seed}-{index}")
    shape, colour, region = rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(REGIONS)
    count = rng.randint(1, 3)
    grey = rng.randint(0, 60)
    image = Image.new("RGB", (image_size, image_size), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    rx0, ry0, rx1, ry1 = _region_box(region, image_size)
    side = max(3, min(rx1 - rx0, ry1 - ry0) // 3)
    placed: list[tuple[int, int]] = []
    for _ in range(count):  # non-overlapping cells of the region, so the count is visible
        for _ in range(50):
            x, y = rng.randint(rx0, rx1 - side), rng.randint(ry0, ry1 - side)
            if all(abs(x - px) >= side or abs(y - py) >= side for px, py in placed):
                break
        placed.append((x, y))
        _draw_shape(draw, shape, (x, y, x + side - 1, y + side - 1), COLOURS[colour])
    noun = shape + ("s" if count > 1 else "")
    where = "in the centre" if region == "centre" else f"on the {region}" if region in ("left", "right") \
        else f"at the {region}"
    caption = f"{COUNTS[count - 1]} {colour} {noun} {where}"
    attributes = {"shape": shape, "colour": colour, "count": count, "region": region}
    if words and rng.random() < 0.5:
        word = rng.choice(WORDS)
        draw.text((1, image_size - 11), word, fill=(255, 255, 255))
        caption += f", the word {word}"
        attributes["word"] = word
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
    return ImageText(pixels, caption, attributes)


def synthetic_examples(count: int, seed: int = 0, image_size: int = 32, words: bool = True) -> list[ImageText]:
    return [synthetic_image(i, seed, image_size, words) for i in range(count)]


def write_image_dataset(examples: list[ImageText], directory: str | Path) -> Path:
    """images/NNNNN.png and captions.jsonl (written to a temporary name, then renamed)."""
    from PIL import Image

    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, ex in enumerate(examples):
        rel = f"images/{i:05d}.png"
        array = (ex.pixels.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(directory / rel)
        lines.append(json.dumps({"image": rel, "caption": ex.caption, **ex.attributes}))
    tmp = directory / ".captions.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(directory / "captions.jsonl")
    return directory


def read_image_dataset(directory: str | Path, image_size: int) -> list[ImageText]:
    """The examples of a folder (captions.jsonl + images), resized to image_size x image_size RGB."""
    from PIL import Image, UnidentifiedImageError

    directory = Path(directory)
    index = directory / "captions.jsonl"
    if not index.is_file():
        raise FastlmError(f"{directory}: no captions.jsonl (expected lines {{\"image\": PATH, \"caption\": TEXT}})")
    out = []
    for number, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{index}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise FastlmError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("image"), str) \
                or not isinstance(record.get("caption"), str):
            raise FastlmError(f"{where}: expected {{\"image\": PATH, \"caption\": TEXT}}")
        path = directory / record["image"]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB").resize((image_size, image_size))
        except (OSError, UnidentifiedImageError) as e:
            raise FastlmError(f"{where}: cannot read image {record['image']!r} ({e})") from None
        pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        attributes = {k: v for k, v in record.items() if k not in ("image", "caption")}
        out.append(ImageText(pixels, record["caption"], attributes))
    if not out:
        raise FastlmError(f"{index}: no examples")
    return out
