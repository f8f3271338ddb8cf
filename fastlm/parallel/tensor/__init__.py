"""fastlm.parallel.tensor: Megatron-style tensor and sequence parallelism.

    from fastlm.parallel import init_mesh
    from fastlm.parallel.tensor import parallelize_tp, clip_grad_norm_
    mesh = init_mesh(tp=2)                          # under torchrun; dp = world / tp
    model = parallelize_tp(GPT(config), mesh, sequence_parallel=True)

Files: collectives.py (autograd collectives), linear.py (column/row parallel), embedding.py
(vocab-parallel embedding), cross_entropy.py (vocab-parallel loss), random.py (dropout RNG),
layout.py (shards, layout checks), lora.py (LoRA adapters on split layers), parallelize.py
(parallelize_tp), grad_norm.py (clipping),
checkpoint.py (sharded, resharding checkpoints with torch.distributed.checkpoint).
"""
from fastlm.parallel.tensor.collectives import (
                                                copy_to_tp,
                                                gather_from_sequence,
                                                gather_from_tp,
                                                reduce_from_tp,
                                                reduce_scatter_to_sequence,
                                                scatter_to_sequence,
                                                scatter_to_tp,
)
from fastlm.parallel.tensor.cross_entropy import vocab_parallel_cross_entropy
from fastlm.parallel.tensor.embedding import VocabParallelEmbedding
from fastlm.parallel.tensor.grad_norm import clip_grad_norm_
from fastlm.parallel.tensor.layout import check_tp_layout
from fastlm.parallel.tensor.linear import ColumnParallelLinear, GQAColumnParallelLinear, RowParallelLinear
from fastlm.parallel.tensor.parallelize import parallelize_tp
from fastlm.parallel.tensor.random import RNGTracker, TPDropout

__all__ = ["ColumnParallelLinear", "GQAColumnParallelLinear", "RowParallelLinear", "VocabParallelEmbedding",
           "vocab_parallel_cross_entropy", "parallelize_tp", "check_tp_layout", "clip_grad_norm_", "RNGTracker",
           "TPDropout", "copy_to_tp", "reduce_from_tp", "scatter_to_tp", "gather_from_tp", "scatter_to_sequence",
           "gather_from_sequence", "reduce_scatter_to_sequence"]
