"""Each tensor-parallel shard gets exactly its slice of its linear's pruning mask (fastlm.prune.keep.
shard_pairs), for every split: q/k/v and gate/up fused column splits, row splits, and GQA's replicated
k/v (fewer kv heads than ranks)."""
from __future__ import annotations

import pytest
import torch

from tests.parallel.dist_helpers import run_world


def _shards(rank, world, n_head, n_kv_head):
    from fastlm.models import GPT, GPTConfig
    from fastlm.parallel import init_mesh
    from fastlm.parallel.tensor import parallelize_tp
    from fastlm.prune import prune_model
    from fastlm.prune.keep import shard_pairs

    mesh = init_mesh(dp=1, tp=world, pp=1)
    torch.manual_seed(0)
    model = GPT(GPTConfig(family="llama", n_layer=1, n_head=n_head, n_kv_head=n_kv_head, d_model=32, vocab_size=64,
                          max_seq_len=16, d_ff=64))
    masks = prune_model(model, sparsity=0.5)  # random-looking masks; every kept weight is non-zero
    parallelize_tp(model, mesh)
    pairs = shard_pairs(model, masks)
    kinds = sorted(type(m).__name__ for n, m in model.named_modules() if n.endswith(("qkv", "proj", "fc")))
    # a shard's non-zeros are exactly its mask: the mask was split like the weight
    return kinds, len(pairs), all(torch.equal(p.detach() != 0, m) for p, m in pairs)


@pytest.mark.parametrize("n_head,n_kv_head", [(4, 2), (2, 1)], ids=["kv-split", "gqa-replicated-kv"])
def test_each_shard_gets_its_slice_of_the_mask(n_head, n_kv_head):
    for kinds, pairs, exact in run_world(_shards, 2, n_head, n_kv_head, timeout=120):
        assert exact
        gqa = n_kv_head < 2
        assert ("GQAColumnParallelLinear" in kinds) == gqa
        assert pairs == 4 + gqa  # qkv (and its kv_weight), proj, fc, mlp.proj
