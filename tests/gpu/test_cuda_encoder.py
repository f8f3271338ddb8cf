"""The encoders on a GPU (Triton varlen, non-causal attention): HF parity on padded batches in fp32,
and a bf16-autocast masked-LM step. Skipped without CUDA; FASTLM_TEST_DEVICE=cpu self-checks the file."""
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fastlm.models import from_hf  # noqa: E402

from ..models.test_encoder import batch, hf_logits, make_hf  # noqa: E402

DEVICE = os.environ.get("FASTLM_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("family", ["bert", "roberta", "albert"])
def test_encoder_matches_hf_on_gpu(family):
    hf = make_hf(family, "mlm").to(DEVICE)
    model = from_hf(hf)
    ids, mask, types, labels = (t.to(DEVICE) if t is not None else None for t in batch(family, padded=True))
    out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
    logits, loss = model(ids, mask, types, labels=labels)
    keep = mask.bool()
    # TF32 matmuls on either side: a looser bound than the CPU tests.
    torch.testing.assert_close(logits[keep], hf_logits(out)[keep], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(loss, out.loss, atol=2e-3, rtol=2e-3)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bf16_autocast_step_close_to_fp32():
    hf = make_hf("bert", "mlm").to(DEVICE)
    model = from_hf(hf)
    ids, mask, types, labels = (t.to(DEVICE) for t in batch("bert", padded=True))
    _, ref = model(ids, mask, types, labels=labels)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        _, loss = model(ids, mask, types, labels=labels)
    assert abs(loss.item() - ref.item()) < 0.05 * abs(ref.item())
    loss.backward()
    assert torch.isfinite(model.encoder.tok_emb.weight.grad).all()
