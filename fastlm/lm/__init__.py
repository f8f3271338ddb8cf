"""Statistical language models with native hot loops: n-gram (Kneser-Ney and friends) and HMMs.

    from fastlm.lm import NGramLM, HMM

    lm = NGramLM.fit(token_ids, order=5)          # modified Kneser-Ney, as KenLM estimates it
    lm.perplexity(val_ids); lm.to_arpa("model.arpa")

    hmm = HMM(n_states=32, vocab_size=4096).fit(sequences)
    hmm.viterbi(sequence)

They read the same tokens as the Transformers (fastlm.data), so `fastlm train ngram` and
`fastlm train tiny` report perplexities on the same validation tokens.
"""
from __future__ import annotations

__all__ = ["NGramLM", "HMM"]

_MODULES = {"NGramLM": "fastlm.lm.ngram", "HMM": "fastlm.lm.hmm"}


def __getattr__(name: str):  # imported when first used: `import fastlm.lm` stays cheap
    if name in _MODULES:
        import importlib

        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module 'fastlm.lm' has no attribute {name!r}")
