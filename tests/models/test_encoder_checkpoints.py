"""Encoder checkpoint directories: save_pretrained output in (safetensors and pytorch_model.bin),
and every kind of bad directory gets an error naming the file and the key, never a half-loaded model."""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fastlm.models import Encoder, EncoderForMaskedLM, from_hf, load_hf_checkpoint  # noqa: E402
from tests.models.test_encoder import batch, make_hf  # noqa: E402


def save(model, d, safe=True):
    model.save_pretrained(str(d), safe_serialization=safe)
    return d


@pytest.mark.parametrize("family", ["bert", "roberta", "albert"])
def test_bare_checkpoint_directory_builds_the_bare_encoder(tmp_path, family):
    hf = make_hf(family, "bare")
    model = from_hf(save(hf, tmp_path))
    assert type(model) is Encoder and model.pooler is not None
    ids, mask, types, _ = batch(family, padded=True)
    out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(model(ids, mask, types)[mask.bool()], out.last_hidden_state[mask.bool()],
                               atol=2e-5, rtol=1e-5)


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path):
    hf = make_hf("bert", "mlm")
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    model = load_hf_checkpoint(tmp_path)
    assert isinstance(model, EncoderForMaskedLM)
    ids, mask, types, _ = batch("bert", padded=False)
    torch.testing.assert_close(model(ids, mask, types), hf(input_ids=ids, attention_mask=mask,
                                                             token_type_ids=types).logits, atol=3e-5, rtol=1e-5)


def test_missing_or_unknown_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: invalid JSON"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match="config.json: no model_type"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "electra"}))
    with pytest.raises(ValueError, match="config.json: unsupported model_type 'electra'.*bert, roberta, albert"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "position_embedding_type": "relative_key"}))
    with pytest.raises(ValueError, match="config.json: .*position_embedding_type"):
        from_hf(tmp_path)


def test_missing_or_corrupt_weights(tmp_path):
    hf = make_hf("bert", "bare")
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    with pytest.raises(FileNotFoundError, match="no model.safetensors, model.safetensors.index.json or pytorch_model.bin"):
        from_hf(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="model.safetensors: cannot read the weights"):
        from_hf(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"garbage, not a zip")
    with pytest.raises(ValueError, match="pytorch_model.bin: cannot read the weights"):
        from_hf(tmp_path)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickle_payload_is_refused(tmp_path):
    hf = make_hf("bert", "bare")
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    torch.save({"x": _Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin: cannot read the weights"):
        from_hf(tmp_path)


def test_mismatched_weights_name_the_file_and_key(tmp_path):
    from safetensors.torch import save_file

    hf = make_hf("bert", "bare")
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    bad = dict(sd)
    del bad["encoder.layer.1.attention.self.key.weight"]
    bad["encoder.layer.9.extra.weight"] = torch.zeros(2)
    save_file(bad, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model.safetensors does not match.*missing 1 weight.*layer.1.attention.self.key"
                                         r".weight.*unexpected 1 weight.*layer.9.extra.weight"):
        from_hf(tmp_path)
    bad = dict(sd)
    bad["encoder.layer.0.intermediate.dense.weight"] = torch.zeros(7, 32)
    save_file(bad, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model.safetensors: weight for blocks.0.mlp.fc.weight has shape \(7, 32\)"):
        from_hf(tmp_path)
    # A head fastlm has no class for is reported, not dropped.
    cls = make_hf("bert", "bare")
    sd = {**{f"bert.{k}": v for k, v in cls.state_dict().items()}, "classifier.weight": torch.zeros(2, 32)}
    with pytest.raises(ValueError, match="unexpected 1 weight.*classifier.weight"):
        from_hf(cls.config, sd)
