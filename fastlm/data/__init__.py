"""Data: corpus sources, tokenizer, prepared (tokenized, cached) corpora and batch loaders."""
from fastlm.data.loader import BatchLoader, PackedBatch, eval_batches, pack_documents
from fastlm.data.prepare import PreparedCorpus, default_cache_dir, prepare_corpus
from fastlm.data.sources import DEFAULT_BUILTIN_MODULES

__all__ = ["prepare_corpus", "PreparedCorpus", "BatchLoader", "PackedBatch", "pack_documents", "eval_batches",
           "default_cache_dir", "DEFAULT_BUILTIN_MODULES"]
