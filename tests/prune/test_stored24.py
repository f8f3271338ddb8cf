"""`fastlm prune --pattern 2:4` stores the pruned linears compressed in model.safetensors; every reader
densifies them (exactly), eval/generate give what the dense-stored pruned model gives."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import safetensors.torch
import torch

from fastlm.accountability.run_facts import parameter_count
from fastlm.cli import main
from fastlm.prune import prune_model, read_pruning
from fastlm.prune.stored24 import MARKER, META, VALUES, header_metadata
from fastlm.train.errors import CheckpointError
from fastlm.train.run import load_run
from fastlm.train.weight_files import load_state_file
from fastlm.train.weights import save_weights
from tests.test_cli import MICRO_TOML


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(trained run, its 2:4 prune stored compressed, the same prune stored dense)."""
    root = tmp_path_factory.mktemp("stored24")
    config = root / "micro.toml"
    config.write_text(MICRO_TOML.replace("steps = 4", "steps = 8"))
    assert main(["train", str(config), "--out", str(root / "run"), "--quiet"]) == 0
    assert main(["prune", str(root / "run"), "--out", str(root / "packed"), "--pattern", "2:4", "--no-eval"]) == 0
    dense = root / "dense"  # the control: the same files, model.safetensors written dense
    shutil.copytree(root / "packed", dense)
    _, model, _ = load_run(root / "run")
    prune_model(model, pattern="2:4")
    save_weights(model, dense)
    return root / "run", root / "packed", dense


def test_the_file_holds_the_pruned_layers_compressed(runs):
    _, packed, dense = runs
    record, masks = read_pruning(packed)
    assert record["storage"] == "sparse24"
    listed = json.loads(header_metadata(packed / "model.safetensors")[MARKER])["weights"]
    assert sorted(listed) == sorted(f"{name}.weight" for name in masks)
    stored = safetensors.torch.load_file(str(packed / "model.safetensors"))
    plain = safetensors.torch.load_file(str(dense / "model.safetensors"))
    assert not set(listed) & set(stored)  # no dense copy of a compressed weight
    compressed = sum(stored[n + VALUES].nbytes + stored[n + META].nbytes for n in listed)
    full = sum(plain[n].nbytes for n in listed)
    assert compressed / full == pytest.approx(0.5 + 1 / 32)  # fp32 values + 2-bit offsets
    packed_bytes, dense_bytes = ((d / "model.safetensors").stat().st_size for d in (packed, dense))
    assert dense_bytes - packed_bytes > 0.45 * full  # the file itself shrinks by the saving
    assert parameter_count(packed / "model.safetensors") == parameter_count(dense / "model.safetensors")
    stored_masks = safetensors.torch.load_file(str(packed / "prune_masks.safetensors"))
    assert sum(m.nbytes for m in stored_masks.values()) / full == pytest.approx(1 / 32)  # one bit per weight


def test_masks_written_a_byte_per_weight_are_read_too(runs, tmp_path):
    _, packed, _ = runs
    record, masks = read_pruning(packed)
    old = tmp_path / "old"
    shutil.copytree(packed, old)
    safetensors.torch.save_file({n: m.to(torch.uint8) for n, m in masks.items()}, str(old / "prune_masks.safetensors"))
    _, again = read_pruning(old)
    assert again.keys() == masks.keys() and all(torch.equal(again[n], masks[n]) for n in masks)


def test_round_trip_is_exact(runs):
    run, packed, _ = runs
    _, model, _ = load_run(run)
    prune_model(model, pattern="2:4")  # the pruned model in memory, never written
    state = load_state_file(packed / "model.safetensors")
    want = {k: v for k, v in model.state_dict().items() if k in state}
    assert set(state) == set(want) and len(state) >= len(model.state_dict()) - 1  # (a tied head once)
    assert all(torch.equal(state[k], want[k]) for k in want)
    _, loaded, _ = load_run(packed)  # fastlm's reader: the dense model
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_eval_and_generate_equal_the_dense_pruned_model(runs, capsys):
    _, packed, dense = runs
    outputs = []
    for directory in (packed, dense):
        assert main(["eval", str(directory)]) == 0
        ppl = re.search(r"val_ppl (\S+)", capsys.readouterr().out).group(1)
        assert main(["generate", str(directory), "--prompt", "The class", "--max-new-tokens", "12", "--seed", "3"]) == 0
        outputs.append((ppl, capsys.readouterr().out))
    assert outputs[0] == outputs[1]
    ids = torch.randint(0, 320, (2, 16))
    with torch.no_grad():
        got, want = load_run(packed, sparse=True)[1](ids), load_run(dense, sparse=True)[1](ids)
    assert torch.equal(got, want)  # the same Sparse24Linear layers whichever way the file stored them


def test_export_and_quantize_read_it(runs, tmp_path):
    _, packed, dense = runs
    for directory in (packed, dense):
        assert main(["export", str(directory), "--out", str(tmp_path / f"hf-{directory.name}")]) == 0
        assert main(["quantize", str(directory), "--scheme", "w8a16", "--out",
                     str(tmp_path / f"q-{directory.name}")]) == 0
    for kind in ("hf", "q"):
        a, b = (safetensors.torch.load_file(str(tmp_path / f"{kind}-{d.name}" / "model.safetensors"))
                for d in (packed, dense))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), kind


def test_a_damaged_record_is_a_one_line_error(runs, tmp_path):
    _, packed, _ = runs
    bad = tmp_path / "bad"
    shutil.copytree(packed, bad)
    path = bad / "model.safetensors"
    tensors = safetensors.torch.load_file(str(path))
    metadata = header_metadata(path)
    name = next(iter(json.loads(metadata[MARKER])["weights"]))
    del tensors[name + META]
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    (bad / "weights.json").unlink()  # (the seal would refuse the changed file first)
    with pytest.raises(CheckpointError, match=f"lists the 2:4 weight '{re.escape(name)}' but not"):
        load_run(bad)


def test_packed_masks_round_trip_at_odd_shapes(tmp_path):
    from fastlm.prune.saved import pruning_record, write_pruning

    g = torch.Generator().manual_seed(0)
    masks = {"a": torch.rand(7, 13, generator=g) > 0.5, "b": torch.rand(3, 5, generator=g) > 0.3}
    write_pruning(tmp_path, masks, pruning_record(masks, "unstructured", "layer"))
    _, again = read_pruning(tmp_path)
    assert all(again[n].dtype == torch.bool and torch.equal(again[n], masks[n]) for n in masks)
