"""Image prefixes in the GPT, the LLaVA-style ImageToText and the CLIP-style ContrastiveImageText."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastlm.models import GPT, GPTConfig
from fastlm.models.encoder_config import EncoderConfig
from fastlm.models.multimodal import ContrastiveImageText, ImageToText
from fastlm.models.vision import VisionConfig

VISION = VisionConfig(image_size=16, patch_size=4, d_model=32, n_layer=1, n_head=2, d_ff=64)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_prefix_of_token_embeddings_equals_those_tokens(family):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(family=family, vocab_size=50, n_layer=2, n_head=2, n_kv_head=2, d_model=32,
                        max_seq_len=32)).eval()
    first, rest = torch.randint(0, 50, (2, 5)), torch.randint(0, 50, (2, 4))
    with torch.no_grad():
        want = gpt.hidden_states(torch.cat([first, rest], 1))
        got = gpt.hidden_states(rest, prefix=gpt.tok_emb(first))
        cache = gpt.make_kv_cache(2, 32)
        a = gpt.hidden_states(rest[:, :2], cache, prefix=gpt.tok_emb(first))
        b = gpt.hidden_states(rest[:, 2:], cache)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([a, b], 1), want, atol=1e-5, rtol=1e-5)  # KV cache after a prefix
    labels = torch.cat([first, rest], 1)
    loss_want = gpt(labels, labels.masked_fill(torch.arange(9) < 5, -100))[1]
    loss_got = gpt(rest, rest, prefix=gpt.tok_emb(first))[1]  # no loss on the prefix
    torch.testing.assert_close(loss_got, loss_want, atol=1e-5, rtol=1e-5)


def test_image_to_text_loss_masks_the_prompt_and_learns():
    torch.manual_seed(0)
    model = ImageToText(VISION, GPTConfig(family="llama", vocab_size=20, n_layer=1, n_head=2, n_kv_head=2,
                                          d_model=32, max_seq_len=32))
    pixels = torch.randn(4, 3, 16, 16)
    ids = torch.randint(0, 20, (4, 6))
    labels = ids.clone()
    labels[:, :2] = -100  # the prompt
    logits, loss = model(pixels, ids, labels)
    assert logits.shape == (4, 16 + 6, 20)
    # the same loss by hand: image positions and the prompt never count
    targets = F.pad(F.pad(labels, (16, 0), value=-100)[:, 1:], (0, 1), value=-100)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 20), targets.reshape(-1), ignore_index=-100))
    # the fused loss (no logits: the head skips the image positions) is the same, with the same gradients
    fused = model(pixels, ids, labels, return_logits=False)[1]
    torch.testing.assert_close(fused, loss, atol=1e-6, rtol=1e-5)
    want = torch.autograd.grad(loss, list(model.parameters()))
    got = torch.autograd.grad(fused, list(model.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = loss.item()
    for _ in range(30):
        loss = model(pixels, ids, labels)[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first
    out = model.generate(pixels, ids[:, :2], max_new_tokens=4)
    assert out.shape == (4, 6) and torch.equal(out, torch.cat([ids[:, :2], model(pixels, out)[:, 17:21].argmax(-1)], 1))


def test_contrastive_model_matches_the_plain_loss_and_trains():
    torch.manual_seed(0)
    model = ContrastiveImageText(VISION, EncoderConfig(family="bert", vocab_size=30, n_layer=1, n_head=2, d_model=32,
                                                       d_ff=64, max_seq_len=8), embed_dim=16)
    pixels, ids = torch.randn(6, 3, 16, 16), torch.randint(1, 30, (6, 8))
    loss = model(pixels, ids, chunk_size=4)
    img, txt = model.image_features(pixels), model.text_features(ids)
    logits = model.logit_scale.exp() * img @ txt.T
    want = 0.5 * (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6)))
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(20):
        loss = model(pixels, ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * want.item()


def _clip_model():
    torch.manual_seed(0)
    return ContrastiveImageText(VISION, EncoderConfig(family="bert", vocab_size=30, n_layer=1, n_head=2, d_model=32,
                                                      d_ff=64, max_seq_len=8), embed_dim=16)


def _clip_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 16, 16, generator=g), torch.randint(1, 30, (8, 8), generator=g)


def _clip_rank(rank, world):
    import torch.distributed as dist

    from fastlm.parallel import init_mesh

    mesh = init_mesh(dp=world)
    model = _clip_model()
    pixels, ids = _clip_batch()
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
    loss = model(pixels[rows], ids[rows], group=mesh.dp_group, chunk_size=3)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    dist.all_reduce(grads)
    return loss.item(), grads / world  # data parallelism's average


def test_data_parallel_contrastive_loss_is_the_global_batch():
    """2 gloo processes, 4 pairs each: the loss of all 8 pairs and, averaged over ranks, its exact gradient."""
    from tests.parallel.dist_helpers import run_world

    model = _clip_model()
    pixels, ids = _clip_batch()
    loss = model(pixels, ids)
    loss.backward()
    want = torch.cat([p.grad.flatten() for p in model.parameters()])
    for got_loss, got in run_world(_clip_rank, 2, timeout=120):
        assert got_loss == pytest.approx(loss.item(), rel=1e-5)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_a_training_step_runs_on_fastlm_fused_ops():
    """Patch embedding, projector (GELU in the GEMM epilogue), blocks and head of ImageToText dispatch to
    fastlm's ops: no aten GEMM, activation, softmax or cross-entropy on the way, forward or backward."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Calls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.counts[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = ImageToText(VISION, GPTConfig(family="gpt2", vocab_size=50, n_layer=2, n_head=2, d_model=32,
                                          max_seq_len=32))
    ids = torch.randint(0, 50, (2, 6))
    with Calls() as calls:
        model(torch.randn(2, 3, 16, 16), ids, ids, return_logits=False)[1].backward()
    c = calls.counts
    linears = 1 + 4 * VISION.n_layer + 2 + 4 * 2  # patch embedding, ViT blocks, projector, decoder blocks
    assert c["fastlm.matmul_fwd"] == linears and c["fastlm.matmul_bwd"] == linears
    assert c["fastlm.attention_fwd"] == VISION.n_layer + 2 and c["fastlm.linear_cross_entropy_fwd"] == 1
    unfused = [k for k in c if any(w in k for w in ("mm", "linear", "gelu", "softmax", "log_softmax", "nll",
                                                    "scaled_dot", "layer_norm", "convolution"))
               and not k.startswith("fastlm.")]
    assert not unfused, unfused
