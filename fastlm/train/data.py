"""A run's language-modelling data: the prepared corpus, this rank's training batches and the
validation batches (token windows for a GPT, masked sequences for an encoder).

    corpus = run_corpus(config, tokenizer_path, show_progress)
    loader, val_batches = lm_batches(config, corpus, model_config, dp_rank, dp_size, device)
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

from fastlm.data import BatchLoader, eval_batches, prepare_corpus
from fastlm.data.stream_loader import StreamLoader
from fastlm.train.errors import ConfigError


def run_corpus(config, tokenizer_path: Path | None, show_progress: bool = False):
    """The corpus of [data], tokenized with tokenizer_path (None: a BPE tokenizer trained on it)."""
    d = config.data
    corpus = prepare_corpus(d.source, vocab_size=d.vocab_size, text_field=d.text_field, tokenizer_path=tokenizer_path,
                            val_fraction=d.val_fraction, builtin_modules=d.builtin_modules, show_progress=show_progress,
                            augment=counterfactual_of(d), workers=d.workers, **deid_options(d))
    return with_canaries(corpus, d.canaries, d.canary_repeats, config.train.seed)


def counterfactual_of(data_section):
    """The Counterfactual of data.counterfactual (None when unset): checks a pairs file before any work."""
    if data_section.counterfactual is None:
        return None
    from fastlm.data.counterfactual import Counterfactual

    return Counterfactual.of(data_section.counterfactual)


def deid_options(d) -> dict:
    """prepare_corpus's de-identification arguments from [data] (deidentify, deid_operation, deid_key_file)."""
    if not d.deidentify:
        return {}
    key = None
    if d.deid_key_file:
        from fastlm.data.deid.corpus import read_key_file

        key = read_key_file(d.deid_key_file, "data.deid_key_file")
    return {"deidentify": d.deidentify, "deid_operation": d.deid_operation, "deid_key": key}


def with_canaries(corpus, count: int, repeats: int, seed: int):
    """The corpus with `count` canaries planted in its training split (meta["canaries"]: their record)."""
    if not count:
        return corpus
    from fastlm.data.canaries import insert_canaries

    tokens, record = insert_canaries(corpus.train_tokens, corpus.encode, corpus.eos_id, count=count,
                                     repeats=repeats, seed=seed)
    # The key names the data a checkpoint trained on: planted canaries change it.
    return dataclasses.replace(corpus, train_tokens=tokens, key=f"{corpus.key}+canaries-{count}x{repeats}-{seed}",
                               meta={**corpus.meta, "canaries": record})


def lm_batches(config, corpus, model_config, dp_rank: int = 0, dp_size: int = 1,
               device: torch.device | None = None, replay_tokens=None) -> tuple:
    """(this rank's training batch loader, the validation batches). replay_tokens: the original stream
    that train.replay mixes into every batch (fastlm.train.replay)."""
    t, d = config.train, config.data
    sampling = config.privacy.sampling if config.privacy.dp_sgd else "random"  # DP-SGD: disjoint windows
    if config.model.is_encoder:  # masked-LM pretraining: [MASK], [CLS], [SEP] follow the tokenizer's ids
        from fastlm.data.masking import MaskedLMLoader

        rule = masked_lm_rule(config, corpus, model_config.vocab_size)
        loader = MaskedLMLoader(corpus.train_tokens, rule=rule, seq_len=d.seq_len,
                                global_batch_size=t.global_batch_size, micro_batch_size=t.micro_batch_size,
                                seed=t.seed, rank=dp_rank, world_size=dp_size, shares=config.parallel.fixed_shares,
                                sampling=sampling, dynamic_shares=config.parallel.dp_shares == "dynamic")
        return loader, validation_batches(config, corpus, model_config)
    check_tokenizer_fits(corpus, model_config)
    loader_class = StreamLoader if d.stateful else BatchLoader  # stateful: rows continue (truncated BPTT)
    if replay_tokens is not None:
        from fastlm.data.replay import ReplayBatchLoader

        loader_class = functools.partial(ReplayBatchLoader, replay_tokens=replay_tokens, replay=t.replay)
    loader = loader_class(corpus.train_tokens, seq_len=d.seq_len, global_batch_size=t.global_batch_size,
                         micro_batch_size=t.micro_batch_size, seed=t.seed, rank=dp_rank, world_size=dp_size,
                         pin_memory=device is not None and device.type == "cuda", shares=config.parallel.fixed_shares,
                         pack_eos_id=corpus.eos_id if d.pack else None,
                         **({"sampling": sampling, "dynamic_shares": config.parallel.dp_shares == "dynamic"}
                            if loader_class is not StreamLoader else {}))
    return loader, validation_batches(config, corpus, model_config)


def check_tokenizer_fits(corpus, model_config) -> None:
    """A one-line ConfigError when the corpus's tokenizer has more tokens than the model's vocabulary."""
    if corpus.vocab_size > model_config.vocab_size:
        raise ConfigError(f"the tokenizer has {corpus.vocab_size} tokens, more than model.vocab_size = "
                          f"{model_config.vocab_size} (set model.vocab_size or data.vocab_size)")


def validation_batches(config, corpus, model_config) -> list:
    """The fixed validation batches (the same in training and `fastlm eval`)."""
    t, d = config.train, config.data
    if config.model.is_encoder:  # fixed masks
        from fastlm.data.masking import masked_eval_batches

        rule = masked_lm_rule(config, corpus, model_config.vocab_size)
        return masked_eval_batches(corpus.val_tokens, rule=rule, seq_len=d.seq_len, batch_size=t.micro_batch_size,
                                   num_batches=t.eval_batches)
    return eval_batches(corpus.val_tokens, seq_len=d.seq_len, batch_size=t.micro_batch_size,
                        num_batches=t.eval_batches)


def masked_lm_rule(config, corpus, model_vocab_size: int):
    """How a run masks its sequences (fastlm.data.masking.MaskingRule), from [data] and the tokenizer."""
    from fastlm.data.masking import NUM_SPECIAL_TOKENS, MaskingRule, SpecialTokens, word_start_table

    d = config.data
    special = SpecialTokens.of(corpus.tokenizer(), corpus.vocab_size)
    if max(special) >= model_vocab_size:
        raise ConfigError(f"the tokenizer has {corpus.vocab_size} tokens: model.vocab_size = {model_vocab_size} "
                          f"leaves no room for [MASK], [CLS], [SEP] (expected at least "
                          f"{corpus.vocab_size + NUM_SPECIAL_TOKENS})")
    word_starts = word_start_table(corpus.tokenizer(), corpus.vocab_size) if d.whole_word_mask else None
    return MaskingRule(special, random_vocab=corpus.vocab_size, seed=config.train.seed, masking=d.masking,
                       mask_prob=d.mask_prob, word_starts=word_starts, sentence_order=d.sentence_order)
