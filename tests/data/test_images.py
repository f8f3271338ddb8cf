"""The synthetic image-text set and the folder reader."""
from __future__ import annotations

import json

import pytest
import torch

from fastlm.data.images import (COLOURS, read_image_dataset, synthetic_examples, synthetic_image,
                                write_image_dataset)
from fastlm.train.errors import FastlmError


def test_synthetic_images_are_deterministic_and_captions_state_what_is_drawn():
    a, b = synthetic_image(7, seed=3), synthetic_image(7, seed=3)
    assert torch.equal(a.pixels, b.pixels) and a.caption == b.caption
    assert not torch.equal(synthetic_image(8, seed=3).pixels, a.pixels)
    for ex in synthetic_examples(60, seed=1, image_size=32, words=False):
        attrs = ex.attributes
        assert ex.pixels.shape == (3, 32, 32) and 0 <= ex.pixels.min() and ex.pixels.max() <= 1
        assert attrs["colour"] in ex.caption and attrs["shape"] in ex.caption
        # the drawn colour is in the picture, in the stated region
        colour = torch.tensor(COLOURS[attrs["colour"]], dtype=torch.float32)[:, None, None] / 255
        hit = (ex.pixels - colour).abs().amax(0) < 1e-6
        assert hit.any()
        ys, xs = hit.nonzero(as_tuple=True)
        if attrs["region"] == "left":
            assert xs.max() < 16
        elif attrs["region"] == "right":
            assert xs.min() >= 16
        elif attrs["region"] == "top":
            assert ys.max() < 16
        elif attrs["region"] == "bottom":
            assert ys.min() >= 16


def test_a_written_folder_reads_back(tmp_path):
    examples = synthetic_examples(5, seed=0, image_size=24)
    write_image_dataset(examples, tmp_path / "set")
    back = read_image_dataset(tmp_path / "set", image_size=24)
    assert [e.caption for e in back] == [e.caption for e in examples]
    assert back[0].attributes["shape"] == examples[0].attributes["shape"]
    torch.testing.assert_close(back[0].pixels, examples[0].pixels, atol=1 / 255, rtol=0)


def test_malformed_records_and_images_name_file_and_line(tmp_path):
    write_image_dataset(synthetic_examples(2), tmp_path / "set")
    index = tmp_path / "set" / "captions.jsonl"
    lines = index.read_text().splitlines()
    index.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(FastlmError, match=r"captions.jsonl:2: not JSON"):
        read_image_dataset(tmp_path / "set", 32)
    index.write_text(json.dumps({"image": "images/00000.png"}) + "\n")
    with pytest.raises(FastlmError, match=r"captions.jsonl:1: expected"):
        read_image_dataset(tmp_path / "set", 32)
    (tmp_path / "set" / "images" / "bad.png").write_bytes(b"not a png")
    index.write_text(json.dumps({"image": "images/bad.png", "caption": "x"}) + "\n")
    with pytest.raises(FastlmError, match=r"captions.jsonl:1: cannot read image 'images/bad.png'"):
        read_image_dataset(tmp_path / "set", 32)
