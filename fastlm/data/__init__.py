"""Data: corpus sources, tokenizer, prepared (tokenized, cached) corpora and batch loaders."""
from fastlm.data.loader import BatchLoader, eval_batches
from fastlm.data.prepare import PreparedCorpus, default_cache_dir, prepare_corpus
from fastlm.data.sources import DEFAULT_BUILTIN_MODULES

__all__ = ["prepare_corpus", "PreparedCorpus", "BatchLoader", "eval_batches",
           "default_cache_dir", "DEFAULT_BUILTIN_MODULES"]
