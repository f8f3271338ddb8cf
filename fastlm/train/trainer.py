"""The trainer: config -> data -> model -> parallelize -> one train step in a loop -> checkpoints and metrics.

    summary = Trainer(load_config("tiny")).fit()    # {"val_loss", "val_ppl", "run_dir", ...}

`fit()` reads top to bottom like the loop it is (torchtitan style). Only rank 0 (env RANK)
writes the run directory. A run that fails before its first optimizer step removes the run
directory it created, so a bad input leaves nothing behind. The step, the loop, the checkpoint
writer and the run-directory lifecycle are the ones `fastlm finetune` uses too.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch

from fastlm._malloc import tune_malloc
from fastlm.accountability.provenance import record_launch
from fastlm.distill.training import Distillation
from fastlm.parallel.dynamic_shares import dynamic_shares_for_run
from fastlm.prune.keep import carry_pruning, mask_keeper
from fastlm.privacy.training import PrivateTraining, private_metrics, private_step_hooks
from fastlm.privacy.encryption import encryption_for
from fastlm.train.checkpointer import Checkpointer
from fastlm.train.config import (Config, ConfigError, check_batch_split, check_checkpoint_key, validate,
                                 with_model_architecture)
from fastlm.train.data import lm_batches, masked_lm_rule, run_corpus
from fastlm.train.evaluate import evaluate
from fastlm.train.lora import apply_run_lora, save_adapter
from fastlm.train.replay import replay_tokens
from fastlm.train.loop import Hooks, Schedule, run_steps
from fastlm.train.metrics import MetricsLog, progress_bar
from fastlm.train.optim import build_optimizer, lr_at
from fastlm.train.run import build_model, init_model_from, masked_lm_model
from fastlm.train.run_dir import RunDirectory, choose_run_dir
from fastlm.train.runtime import Runtime, init_run_mesh, resolve_precision
from fastlm.train.step import TrainStep, autocast_for
from fastlm.train.weights import save_weights

__all__ = ["Trainer", "autocast_for", "resolve_precision", "masked_lm_rule", "parallelize_for_run"]


class Trainer:
    def __init__(self, config: Config, out_dir: str | os.PathLike | None = None, resume: bool = False,
                 show_progress: bool = True):
        validate(config)  # also a config built or changed in Python gets one-line errors
        check_checkpoint_key(config)  # an encrypted run fails here, not at its first checkpoint
        if config.train.adversarial != "none":  # embedding perturbation lives in the task loop
            raise ConfigError(f"train.adversarial = \"{config.train.adversarial}\": only for fine-tuning "
                              f"(fastlm finetune TASK CONFIG), not for language-model training")
        if config.train.debias != "none":  # the group adversary lives in the classification task
            raise ConfigError(f"train.debias = \"{config.train.debias}\": only for fine-tuning a classifier "
                              f"(fastlm finetune classification CONFIG), not for language-model training")
        self.config = config  # the user's; what the run resolves goes to a copy (self.resolved)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.resume = resume
        self.rt = Runtime.from_env(config, show_progress)  # the mesh is created when the run starts

    def fit(self) -> dict:
        if self.config.model.is_fitted:  # n-gram / HMM: counted or EM-fitted, no gradient steps
            from fastlm.train.statistical import fit_run

            result = fit_run(self.config, self.out_dir, self.resume, self.rt.show_progress)
            self.model = result.pop("model")
            return result
        if self.config.federated.enabled:  # rounds of client steps and server aggregation
            from fastlm.federated.run import fit_federated

            return fit_federated(self)
        cfg, t, rt = self.config, self.config.train, self.rt
        if rt.device.type == "cpu":  # CPU steps reuse large host buffers: keep them out of mmap / trim
            tune_malloc()
        rt.mesh = init_run_mesh(cfg) if rt.world_size > 1 else None
        check_batch_split(cfg, rt.dp[0])
        run_dir = choose_run_dir(cfg.name, self.out_dir, self.resume, rt.mesh)
        torch.manual_seed(t.seed)
        random.seed(t.seed)
        model, tokenizer_path = self._build_model()  # a model from init_from brings its architecture and tokenizer
        corpus = run_corpus(cfg, tokenizer_path, rt.is_main and rt.show_progress)
        if cfg.model.init_embeddings:  # before parallelizing: every rank copies the same rows
            from fastlm.embeddings.init import init_model_embeddings

            rt.say(init_model_embeddings(model, corpus.tokenizer(), cfg.model.init_embeddings))
        apply_run_lora(model, cfg.model.lora)  # model.lora: base frozen, adapters trainable (same seed on every rank)
        self.resolved = resolved_config(cfg, model.config, tokenizer_path, corpus)
        self.corpus_meta = corpus.meta
        loader, val_batches = lm_batches(cfg, corpus, model.config, rt.dp[1], rt.dp[0], rt.device,
                                         replay_tokens(cfg, corpus, rt.is_main and rt.show_progress))
        num_params = model.num_params()
        pm = parallelize_for_run(model.to(rt.device), rt, cfg)
        private = PrivateTraining.setup(cfg, pm, loader.num_samples)  # None without DP-SGD
        optimizer = pm.wrap_optimizer(build_optimizer(pm.module, t, rt.device))  # ZeRO-1 with shard_optimizer
        optimizer = param_server_optimizer(cfg, optimizer, rt)  # sync = "param_server": servers hold the state
        distill = Distillation.setup(cfg, pm, corpus.tokenizer_path, rt.device)  # None without [distill]
        step = self._train_step(pm, optimizer, private, distill)
        next_batches, shares_record = dynamic_shares_for_run(cfg, pm, loader, step, rt.mesh)  # dp_shares = "dynamic"
        identity = {"model": model.config.to_dict(), "corpus_key": corpus.key}  # what a checkpoint must match
        enc = encryption_for(run_dir, cfg.checkpoint, create_id=True)  # None unless checkpoint.encrypt
        ckpt = Checkpointer(run_dir, pm, optimizer, step.scaler, loader, identity, every=cfg.checkpoint.every,
                            keep=cfg.checkpoint.keep, is_main=rt.is_main, device=rt.device, enc=enc,
                            before_save=step.drain)
        evaluate_at = self._evaluator(pm, val_batches, step.autocast, private, run_dir)
        last_step = private.last_step if private is not None else t.steps
        metrics = bar = None
        with RunDirectory(run_dir, fresh=rt.is_main and not self.resume, create=rt.is_main) as rd:
            try:
                start = ckpt.start_step(self.resume, rt.say)
                if private is not None:
                    private.engine.step = start  # the noise of step s is drawn from (seed, s)
                    rt.say(f"fastlm: {private.describe()}")
                self._write_run_files(run_dir, corpus.tokenizer_path)
                metrics = MetricsLog(run_dir if rt.is_main else None, tensorboard=t.tensorboard)
                metrics.truncate_after(start)
                if cfg.model.lora is not None:
                    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
                    rt.say(f"fastlm: LoRA adapters: {trainable / 1e6:.3f}M trainable parameters")
                rt.say(f"fastlm: {num_params / 1e6:.2f}M parameters, {t.steps} steps of {t.global_batch_size} x "
                       f"{cfg.data.seq_len} tokens, {rt.precision} on {rt.device}")
                result = evaluate_at(0, None, metrics) if start == 0 else None
                bar = progress_bar(last_step, start, rt.is_main and rt.show_progress)
                tokens = t.global_batch_size * cfg.data.seq_len
                schedule = Schedule(start, last_step, lambda i: lr_at(i, t), t.log_every, t.eval_every,
                                    "tokens_per_s", tokens)
                hooks = Hooks(evaluate=lambda done, bar: evaluate_at(done, bar, metrics),
                              save=lambda done: ckpt.maybe_save(done, last_step), started=rd.started,
                              record=lambda done: {"tokens": done * tokens, **shares_record()})
                result = run_steps(step, next_batches, schedule, hooks, metrics, bar) or result
                if result is None:  # resumed a finished run: its last evaluation is already logged
                    result = evaluate_at(last_step, bar, None)
            finally:
                for closing in (bar, loader, metrics, optimizer if step.pushes_gradients else None):
                    if closing is not None:
                        closing.close()  # the bar ends its line, so an error message starts on a fresh one
        final = pm.full_model(rt.is_main)  # every stage's and tp rank's weights in a plain model: a collective
        if rt.is_main:
            self._write_final(final, model.config, run_dir, enc, private, result)
        self.model = pm.module
        return {"step": last_step, "val_loss": result["val_loss"], "val_ppl": result["val_ppl"], "run_dir": str(run_dir)}

    # ------------------------------------------------------------------ pieces

    def _train_step(self, pm, optimizer, private, distill) -> TrainStep:
        """The one training step with this run's hooks: DP-SGD, distillation's loss, local SGD or background
        averaging, pruning masks kept."""
        cfg, rt = self.config, self.rt
        loss_hook = {"loss_of": distill.loss_of} if distill is not None else {}
        return TrainStep(pm, optimizer, device=rt.device, precision=rt.precision,
                         **private_step_hooks(private, cfg.train), **loss_hook,
                         local_sgd_every=cfg.parallel.sync_every if cfg.parallel.sync != "every_step" else 0,
                         max_staleness=cfg.parallel.max_staleness if cfg.parallel.sync == "async" else None,
                         after_step=mask_keeper(pm.module, pm.tensor_parallel, cfg.model.init_from))

    def _write_final(self, final, model_config, run_dir: Path, enc, private, result: dict) -> None:
        """The finished run's files (rank 0): weights, LoRA adapters, carried pruning; the closing lines."""
        cfg = self.config
        save_weights(final, run_dir, enc)
        if cfg.model.lora is not None:  # the adapters alone, in PEFT's layout
            save_adapter(final, model_config, cfg.model.lora, run_dir, cfg.model.init_from)
        carry_pruning(final, run_dir, cfg.model.init_from)
        if private is not None and private.stop_message(cfg.train.steps):
            print(private.stop_message(cfg.train.steps))
        print(f"validation perplexity: {result['val_ppl']:.2f} (loss {result['val_loss']:.4f})")
        print(f"run directory: {run_dir}")

    def _build_model(self) -> tuple[torch.nn.Module, Path | None]:
        cfg = self.config
        tokenizer = Path(cfg.data.tokenizer) if cfg.data.tokenizer else None
        if not cfg.model.init_from:
            return build_model(cfg), tokenizer
        model, init_tokenizer = init_model_from(cfg.model.init_from, encrypt=cfg.checkpoint.encrypt)
        if cfg.model.is_encoder or hasattr(model, "pooler"):  # encoder pretraining needs the MLM head
            model = masked_lm_model(model, cfg.data.sentence_order)
        self.rt.say(f"fastlm: initialized from {cfg.model.init_from}")
        return model, tokenizer or init_tokenizer

    def _write_run_files(self, run_dir: Path, tokenizer_path: Path) -> None:
        """config.toml (the resolved config), tokenizer.json and environment.json (rank 0 only)."""
        if not self.rt.is_main:
            return
        (run_dir / "config.toml").write_text(self.resolved.to_toml())
        record_launch(run_dir, self.rt)  # devices and versions of this launch, for `fastlm card`
        if "canaries" in self.corpus_meta:  # the planted secrets, for `fastlm privacy audit`
            from fastlm.data.canaries import write_record

            write_record(run_dir, self.corpus_meta["canaries"])
        if Path(tokenizer_path).resolve() != (run_dir / "tokenizer.json").resolve():
            shutil.copyfile(tokenizer_path, run_dir / "tokenizer.json")

    def _evaluator(self, pm, batches, autocast, private=None, run_dir: Path | None = None):
        """evaluate_at(step, bar, metrics): the validation loss (and DP-SGD's epsilon), logged and shown."""
        def evaluate_at(step: int, bar, metrics) -> dict:
            if pm.pipe is not None:
                result = pm.pipe.evaluate(batches, autocast)
            else:
                result = evaluate(pm.module, batches, self.rt.device, autocast)
            if metrics is not None:
                privacy = private_metrics(private, step, run_dir if self.rt.is_main else None)
                metrics.log({"step": step, **result, **privacy})
                self.rt.say(f"step {step}: val_loss {result['val_loss']:.4f}, val_ppl {result['val_ppl']:.2f}", bar)
            return result
        return evaluate_at


def parallelize_for_run(model, rt: Runtime, config):
    """fastlm.parallel.parallelize for a run: a layout that does not fit is a one-line config error."""
    from fastlm.parallel import parallelize

    try:
        return parallelize(model, rt.mesh, config, autocast=autocast_for(rt.precision, rt.device))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def param_server_optimizer(config, optimizer, rt: Runtime):
    """fastlm.parallel.param_server_optimizer.param_server_for_run, its layout errors as one-line config errors."""
    from fastlm.parallel.param_server_optimizer import param_server_for_run

    try:
        return param_server_for_run(config, optimizer, rt.rank, rt.world_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def resolved_config(config: Config, model_config, tokenizer_path: Path | None, corpus) -> Config:
    """A copy of config recording what the run really used: the model's architecture (model_config:
    init_from brings its own) and, when the tokenizer came from a file, that file and its vocabulary size."""
    resolved = with_model_architecture(config, model_config)
    if resolved.checkpoint.key_file:  # readers in another directory find it (the path, never the key)
        resolved.checkpoint.key_file = str(Path(resolved.checkpoint.key_file).resolve())
    if tokenizer_path is not None:
        resolved.data.tokenizer = str(Path(tokenizer_path).resolve())
        resolved.data.vocab_size = corpus.vocab_size
    return resolved
