"""fastlm.prune: magnitude pruning of the blocks' linear weights, masks kept while training, 2:4 inference.

    masks = prune_model(model, sparsity=0.5, pattern="unstructured", scope="layer")   # {name: bool mask}
    masks = prune_model(model, pattern="2:4")                 # N:M structured along the input dimension
    attach_masks(model, masks); hook = mask_keeper(model)     # TrainStep(after_step=hook) keeps zeros at zero
                                                              # (under tp each mask split like its weight)
    apply_sparse24(model, masks)                              # 2:4 layers -> Sparse24Linear (CPU inference)
    fastlm.prune.stored24                                     # 2:4 layers stored compressed in model.safetensors

Pruned: every nn.Linear inside the model's `blocks` (attention qkv/proj, MLP fc/proj). Not pruned:
embeddings, norms, the LM head (often tied to the token embedding), pooler/task heads.
"""
from fastlm.prune.keep import attach_masks, attached_masks, mask_keeper
from fastlm.prune.magnitude import PATTERNS, nm_mask, parse_pattern, prunable_linears, prune_model
from fastlm.prune.saved import read_pruning, write_pruning
from fastlm.prune.sparse24 import Sparse24Linear, apply_sparse24, compress24, decompress24

__all__ = ["PATTERNS", "prune_model", "prunable_linears", "parse_pattern", "nm_mask", "attach_masks",
           "attached_masks", "mask_keeper", "read_pruning", "write_pruning", "Sparse24Linear", "apply_sparse24",
           "compress24", "decompress24"]
