"""The plain-torch HMM recursions (log space), the oracle of the kernels: they live in fastlm.ops
(imports point down), re-exported here next to fastlm.lm.hmm."""
from fastlm.ops.reference_hmm import (  # noqa: F401
    hmm_backward_scaled,
    hmm_expected_counts,
    hmm_forward_scaled,
    hmm_viterbi,
)
