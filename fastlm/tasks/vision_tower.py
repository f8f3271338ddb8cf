"""What the image tasks share: the [task] keys of their images and vision tower, and reading an image.

    [task]
    image_field = "image"     # the records' image path (relative to the JSONL file)
    image_size = 32           # shorthand for the tower: images are resized to image_size x image_size
    patch_size = 4
    vision_layers = 2         # the ViT's depth; its width and heads follow [model]'s unless task.vision sets them
    [task.vision]             # optional: any key of the vit family (model.family = "vit"), over the shorthand
    positions = "rope2d"
    n_layer = 4

task.vision takes the keys of fastlm.models.VisionConfig (those of a `model.family = "vit"` [model]
section); a key it sets wins over the shorthand, and the keys it leaves out follow the shorthand and
the text model (d_model, n_head, d_ff = 4 d_model).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastlm.models.vision import VisionConfig
from fastlm.tasks.base import DataFiles
from fastlm.train.errors import ConfigError

# VisionConfig's keys, each optional (None: follow the shorthand or the text model)
_HINTS = typing.get_type_hints(VisionConfig)
VisionKeys = dataclasses.make_dataclass(
    "VisionKeys", [(f.name, _HINTS[f.name] | None, field(default=None)) for f in dataclasses.fields(VisionConfig)])


@dataclass
class ImageSection(DataFiles):
    image_field: str = "image"
    image_size: int = 32
    patch_size: int = 4
    vision_layers: int = 2
    vision: VisionKeys | None = None

    def validate(self) -> None:
        for key in ("image_size", "patch_size", "vision_layers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"task.{key} = {getattr(self, key)}: expected a positive integer")
        if self.image_size % self.patch_size:
            raise ConfigError(f"task.image_size = {self.image_size}: expected a multiple of task.patch_size = "
                              f"{self.patch_size}")
        # the keys that need no text model are checked now, before any data is read
        n_head = self.vision_key("n_head") or 1
        self.tower(d_model=self.vision_key("d_model") or 4 * n_head, n_head=n_head)

    def vision_key(self, name: str):
        return getattr(self.vision, name) if self.vision is not None else None

    @property
    def pixels_shape(self) -> tuple[int, int]:
        """(channels, side) the images are read at: the tower's."""
        return self.vision_key("channels") or 3, self.vision_key("image_size") or self.image_size

    def tower(self, d_model: int, n_head: int) -> VisionConfig:
        """The vision tower's config: task.vision over the shorthand keys and the text model's width and heads."""
        keys = {"image_size": self.image_size, "patch_size": self.patch_size, "n_layer": self.vision_layers,
                "d_model": d_model, "n_head": n_head, "norm_eps": 1e-6}
        if self.vision is not None:
            keys.update({k: v for k, v in dataclasses.asdict(self.vision).items() if v is not None})
        keys.setdefault("d_ff", 4 * keys["d_model"])
        config = VisionConfig(**keys)
        prefix = "task.vision" if self.vision is not None else "task"
        try:
            config.validate(prefix)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if config.channels not in (1, 3):
            raise ConfigError(f"{prefix}.channels = {config.channels}: expected 1 (grey) or 3 (RGB) for image files")
        return config


def load_image(path: Path, size: int, channels: int = 3) -> torch.Tensor:
    """(channels, size, size) float in [0, 1], RGB or grey (channels 1); OSError when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = image.convert("L" if channels == 1 else "RGB").resize((size, size))
    except UnidentifiedImageError as e:
        raise OSError(str(e)) from None
    array = np.asarray(pixels, dtype=np.float32) / 255.0
    return torch.from_numpy(array.reshape(size, size, channels)).permute(2, 0, 1).contiguous()
