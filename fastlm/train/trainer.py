"""The trainer: config -> data -> model -> optimizer -> loop -> checkpoints and metrics.

    summary = Trainer(load_config("tiny")).fit()    # {"val_loss", "val_ppl", "run_dir", ...}

`fit()` reads top to bottom like the loop it is (torchtitan style). Only rank 0 (env RANK)
writes the run directory. A run that fails before its first optimizer step removes the run
directory it created, so a bad input leaves nothing behind.
"""
from __future__ import annotations

import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import safetensors.torch
import torch
from tqdm.auto import tqdm

from fastlm.data import BatchLoader, PackedBatch, eval_batches, prepare_corpus
from fastlm.data.masking import MaskedBatch
from fastlm.models import GPT, Encoder
from fastlm.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from fastlm.train.config import Config, ConfigError, check_batch_split, rank_samples, validate
from fastlm.train.errors import CheckpointError, FastlmError
from fastlm.train.evaluate import evaluate
from fastlm.train.metrics import MetricsLog
from fastlm.train.optim import build_optimizer, lr_at, set_lr
from fastlm.train.run import build_model, init_model_from, masked_lm_model, unique_run_dir
from fastlm.train.run_dir import first_missing, undo_run_dir
from fastlm.train.sharded_checkpoint import is_sharded_checkpoint, load_sharded_checkpoint, save_sharded_checkpoint


class Trainer:
    def __init__(self, config: Config, out_dir: str | os.PathLike | None = None, resume: bool = False,
                 show_progress: bool = True):
        validate(config)  # also a config built or changed in Python gets one-line errors
        if config.train.adversarial != "none":  # embedding perturbation lives in the task loop
            raise ConfigError(f"train.adversarial = \"{config.train.adversarial}\": only for fine-tuning "
                              f"(fastlm finetune TASK CONFIG), not for language-model training")
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.resume = resume
        self.show_progress = show_progress
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.is_main = self.rank == 0
        if torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        else:
            self.device = torch.device("cpu")
        self.precision = resolve_precision(config.train.precision, self.device)
        self.pipe = None  # the pipeline (parallel.pp > 1): this rank's stage and its schedule
        self.tp_mesh = None  # the mesh when the model is tensor-parallel (parallel.tp > 1)

    # ------------------------------------------------------------------ the whole run

    def fit(self) -> dict:
        cfg, t = self.config, self.config.train
        mesh = self._init_mesh()  # None in a single process
        dp_size, dp_rank = (mesh.dp, mesh.dp_rank) if mesh is not None else (1, 0)
        check_batch_split(cfg, dp_size)
        run_dir = self._choose_run_dir() if mesh is None else self._agree_on_run_dir(mesh)

        # Model first: a model from init_from brings its architecture and maybe its tokenizer.
        torch.manual_seed(t.seed)
        random.seed(t.seed)
        model, tokenizer_path = self._build_model()

        corpus = prepare_corpus(
            cfg.data.source, vocab_size=cfg.data.vocab_size, text_field=cfg.data.text_field,
            tokenizer_path=tokenizer_path, val_fraction=cfg.data.val_fraction,
            builtin_modules=cfg.data.builtin_modules, show_progress=self.is_main and self.show_progress)
        if cfg.model.is_encoder:  # masked-LM pretraining: [MASK], [CLS], [SEP] follow the tokenizer's ids
            loader, val_batches = self._masked_lm_data(corpus, model, dp_rank, dp_size)
        else:
            if corpus.vocab_size > model.config.vocab_size:
                raise ConfigError(f"the tokenizer has {corpus.vocab_size} tokens, more than model.vocab_size = "
                                  f"{model.config.vocab_size} (set model.vocab_size or data.vocab_size)")
            loader = BatchLoader(corpus.train_tokens, seq_len=cfg.data.seq_len, global_batch_size=t.global_batch_size,
                                 micro_batch_size=t.micro_batch_size, seed=t.seed, rank=dp_rank,
                                 world_size=dp_size, pin_memory=self.device.type == "cuda",
                                 shares=cfg.parallel.dp_shares, pack_eos_id=corpus.eos_id if cfg.data.pack else None)
            val_batches = eval_batches(corpus.val_tokens, seq_len=cfg.data.seq_len, batch_size=t.micro_batch_size,
                                       num_batches=t.eval_batches)

        model.to(self.device)
        model.activation_checkpointing = t.activation_checkpointing
        if cfg.model.linear == "int8_train":  # SwitchBack: int8 forward and input-gradient matmuls
            from fastlm.quant import apply_int8_training

            apply_int8_training(model)
        if mesh is not None and mesh.tp > 1:  # split every layer over the tp ranks (fastlm.parallel.tensor)
            model = self._tensor_parallel(model, mesh)
        if mesh is not None and mesh.pp > 1:  # keep this rank's stage of the model (fastlm.parallel.pipeline)
            self.pipe = self._pipeline(model, mesh)
            model = self.pipe.stage
        dp = self._data_parallel(model, mesh)  # None in a single process
        optimizer = build_optimizer(model, t, self.device)
        if dp is not None:
            optimizer = dp.wrap_optimizer(optimizer)  # ZeRO-1 with parallel.shard_optimizer
        local_sgd = dp is not None and cfg.parallel.sync == "local_sgd"
        scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        autocast = self._autocast()
        # The checkpoint must belong to the same model and data.
        identity = {"model": model.config.to_dict(), "corpus_key": corpus.key}

        # A new run's directory is removed again if the run fails before its first step.
        fresh = self.is_main and not self.resume
        made = first_missing(run_dir)  # the top directory that mkdir will create, if any
        metrics = bar = None
        start = 0
        try:
            if self.resume:
                ckpt = latest_checkpoint(run_dir)
                if ckpt is None:
                    raise CheckpointError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
                if self._sharded or is_sharded_checkpoint(ckpt):  # any (dp, tp, pp) it was saved at
                    start = load_sharded_checkpoint(ckpt, model, optimizer, scaler, loader, identity, self.device,
                                                    self._layout(mesh))
                else:
                    start = load_checkpoint(ckpt, model, optimizer, scaler, loader, identity, self.device)
            self._open_run_dir(run_dir, corpus.tokenizer_path, model)
            metrics = MetricsLog(run_dir if self.is_main else None, tensorboard=t.tensorboard)
            if self.resume:
                metrics.truncate_after(start)
                self._say(f"fastlm: resumed from {ckpt} (step {start})")
            self._say(f"fastlm: {model.num_params() / 1e6:.2f}M parameters, {t.steps} steps of "
                      f"{t.global_batch_size} x {cfg.data.seq_len} tokens, {self.precision} on {self.device}")

            result = None
            if start == 0:
                result = self._evaluate(model, val_batches, autocast, metrics, step=0)
            bar = tqdm(total=t.steps, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr,
                       disable=not (self.is_main and self.show_progress))
            tokens_per_step = t.global_batch_size * cfg.data.seq_len
            step_time, timed_steps = 0.0, 0  # since the last logged step (eval excluded)
            for step in range(start, t.steps):
                t0 = time.perf_counter()
                lr = lr_at(step, t)
                set_lr(optimizer, lr)
                done = step + 1
                sync = not local_sgd or done % cfg.parallel.sync_every == 0 or done == t.steps
                loss, grad_norm = self._train_step(model, optimizer, scaler, loader.next(), autocast, dp, sync)
                if local_sgd and sync and cfg.parallel.sync_every > 1:
                    dp.average_parameters(optimizer)  # the ranks stepped locally since the last sync
                fresh = False  # from here on a failure keeps the run directory (and its checkpoints)
                log_now = done % t.log_every == 0 or done == t.steps
                if log_now:
                    if self.pipe is not None:
                        loss = self.pipe.reduce_loss(loss)  # computed on the last stage
                    if dp is not None:
                        loss = dp.mean_over_ranks(loss)  # the mean over the global batch
                    loss, grad_norm = loss.item(), grad_norm.item()  # waits for the GPU
                step_time, timed_steps = step_time + time.perf_counter() - t0, timed_steps + 1
                if log_now:
                    if not math.isfinite(loss):
                        raise FastlmError(f"the loss became {loss} at step {done} (try a lower train.lr, "
                                          f"or train.precision = \"fp32\")")
                    tokens_per_s = tokens_per_step * timed_steps / step_time
                    step_time, timed_steps = 0.0, 0
                    metrics.log({"step": done, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                                 "tokens_per_s": tokens_per_s, "tokens": done * tokens_per_step})
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
                bar.update(1)
                if done == t.steps or (t.eval_every and done % t.eval_every == 0):
                    result = self._evaluate(model, val_batches, autocast, metrics, step=done, bar=bar)
                every = cfg.checkpoint.every
                if every and (done % every == 0 or done == t.steps) and self._sharded:
                    save_sharded_checkpoint(run_dir, done, model, optimizer, scaler, loader, identity,
                                            cfg.checkpoint.keep, self._layout(mesh))  # every rank its shards
                elif every and (done % every == 0 or done == t.steps):
                    # A sharded optimizer gathers every rank's shard first (a collective).
                    saved = _SavedState(optimizer.full_state_dict()) if hasattr(optimizer, "full_state_dict") else optimizer
                    if self.is_main:
                        save_checkpoint(run_dir, done, model, saved, scaler, loader, identity, cfg.checkpoint.keep)
            if result is None:  # resumed a finished run: its last evaluation is already logged
                result = self.pipe.evaluate(val_batches, autocast) if self.pipe is not None else \
                    evaluate(model, val_batches, self.device, autocast)
        except BaseException:
            if fresh:
                undo_run_dir(run_dir, made)
            raise
        finally:
            if bar is not None:
                bar.close()  # ends its line, so an error message starts on a fresh one
            loader.close()
            if metrics is not None:
                metrics.close()

        if self.pipe is not None:  # every stage's weights (over tp too) in a plain GPT on rank 0: a collective
            final = self.pipe.full_model() or model
        else:
            final = self._gathered_model(model) if self.tp_mesh is not None else model  # tp: a plain GPT on rank 0
        if self.is_main:
            safetensors.torch.save_model(final, str(run_dir / "model.safetensors.tmp"))
            os.replace(run_dir / "model.safetensors.tmp", run_dir / "model.safetensors")
            print(f"validation perplexity: {result['val_ppl']:.2f} (loss {result['val_loss']:.4f})")
            print(f"run directory: {run_dir}")
        self.model = model
        return {"step": t.steps, "val_loss": result["val_loss"], "val_ppl": result["val_ppl"],
                "run_dir": str(run_dir)}

    # ------------------------------------------------------------------ one optimizer step

    def _train_step(self, model, optimizer, scaler, micro_batches, autocast, dp=None, sync=True):
        """Forward/backward over the micro-batches (gradient accumulation), clip, step.

        Every micro-batch has the same number of tokens, so dividing each mean loss by their
        count makes the gradient that of the mean loss over the global batch. Data parallel (dp):
        gradients are communicated only in the last micro-batch's backward (and not at all on a
        local_sgd step between syncs); DataParallel averages them weighted by each rank's samples.
        """
        if self.pipe is not None:
            return self._pipeline_step(optimizer, micro_batches, dp)
        n = len(micro_batches)
        total = torch.zeros((), device=self.device)
        for i, x in enumerate(micro_batches):
            x = x.to(self.device, non_blocking=True)
            local = dp is not None and (i < n - 1 or not sync)
            with dp.no_sync() if local else nullcontext():
                if isinstance(x, MaskedBatch):  # masked LM: inputs, labels (and segments) of their own
                    with autocast:
                        _, loss = (dp if dp is not None else model)(**x.kwargs())
                else:
                    x, cu = (x.input_ids, x.cu_seqlens) if isinstance(x, PackedBatch) else (x, None)
                    packed = {} if cu is None else {"cu_seqlens": cu}  # documents packed in the rows
                    if isinstance(model, GPT):  # loss by the fused head + cross-entropy: no logits stored
                        packed["return_logits"] = False
                    with autocast:
                        _, loss = (dp if dp is not None else model)(x, labels=x, **packed)
                loss = loss / n
                (scaler.scale(loss) if scaler is not None else loss).backward()
            total += loss.detach()
        if dp is not None:
            dp.finish_grad_sync()  # waits for the buckets' all-reduce (launched during the backward)
        if scaler is not None:
            scaler.unscale_(optimizer)
        clip = self.config.train.grad_clip or float("inf")  # 0: measure the norm, clip nothing
        if self.tp_mesh is not None:  # the whole model's norm, over the tp (and dp) ranks
            from fastlm.parallel.tensor import clip_grad_norm_

            grad_norm = clip_grad_norm_(model, clip, self.tp_mesh, dp)
        elif dp is not None:
            grad_norm = dp.clip_grad_norm_(clip)  # also right when the gradients are sharded
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(optimizer)  # skipped when the scaled gradients overflowed
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total, grad_norm

    # ------------------------------------------------------------------ pieces

    def _init_mesh(self):
        """torchrun started several processes: the process groups, and the same config everywhere."""
        if self.world_size == 1:
            return None
        from fastlm.parallel import init_mesh

        p = self.config.parallel
        mesh = init_mesh(dp=p.dp, tp=p.tp, pp=p.pp, timeout_s=p.timeout_s)
        mesh.check_same("config", self.config.to_dict())
        return mesh

    def _agree_on_run_dir(self, mesh) -> Path:
        """Rank 0 chooses (and checks) the run directory; every rank uses its choice or its error."""
        import torch.distributed as dist

        choice: list = [None]
        if self.is_main:
            try:
                choice = [("ok", str(self._choose_run_dir()))]
            except FastlmError as e:
                choice = [("error", str(e))]
        dist.broadcast_object_list(choice, src=0)
        kind, value = choice[0]
        if kind == "error":
            raise FastlmError(value)
        return Path(value)

    def _tensor_parallel(self, model, mesh):
        from fastlm.parallel.tensor import check_tp_layout, parallelize_tp

        p = self.config.parallel
        try:  # init_from brings its own architecture: check it here (and an encoder's, sequence parallel)
            check_tp_layout(model.config, mesh.tp, p.sequence_parallel, self.config.data.seq_len)
            model = parallelize_tp(model, mesh, sequence_parallel=p.sequence_parallel, seed=self.config.train.seed)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.tp_mesh = mesh
        return model

    @staticmethod
    def _layout(mesh) -> dict:
        return {"dp": mesh.dp if mesh is not None else 1, "tp": mesh.tp if mesh is not None else 1,
                "pp": mesh.pp if mesh is not None else 1}

    @property
    def _sharded(self) -> bool:
        """Checkpoints are sharded (every rank writes its part) under tensor or pipeline parallelism."""
        return self.tp_mesh is not None or self.pipe is not None

    def _gathered_model(self, model):
        """The plain model (GPT or encoder) with a tp model's weights (gathered from every tp rank: a collective)."""
        from fastlm.parallel.tensor.checkpoint import full_state_dict, plain_model

        state = full_state_dict(model)
        if not self.is_main:
            return model
        plain = plain_model(model)
        plain.load_state_dict({k: v.cpu() for k, v in state.items()})
        return plain

    def _pipeline(self, model, mesh):
        from fastlm.parallel.pipeline import Pipeline

        p = self.config.parallel
        return Pipeline(model, mesh, schedule=p.schedule, virtual_stages=p.virtual_stages,
                        stage_layers=p.stage_layers, balance=p.stage_balance,
                        micro_batch_size=self.config.train.micro_batch_size, seq_len=self.config.data.seq_len,
                        autocast=self._autocast())

    def _pipeline_step(self, optimizer, micro_batches, dp=None):
        """_train_step of a pipeline stage: the schedule runs every micro-batch's forward and backward;
        clipping and the step see the whole model (the gradient norm is summed over the stages)."""
        loss = self.pipe.train_step(micro_batches, no_sync=dp.no_sync if dp is not None else None)
        if dp is not None:
            dp.finish_grad_sync()
        self.pipe.finish_grads()  # a tied embedding's two copies (first and last stage)
        grad_norm = self.pipe.clip_grad_norm_(self.config.train.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm

    def _data_parallel(self, model, mesh):
        if mesh is None or mesh.dp == 1:
            return None
        from fastlm.parallel import DataParallel

        p = self.config.parallel
        # Every rank built the model from the same seed: DataParallel checks the weights agree.
        return DataParallel(model, mesh, bucket_mb=p.bucket_mb, shard_optimizer=p.shard_optimizer,
                            grad_reduce_dtype=None if p.grad_reduce_dtype == "fp32" else p.grad_reduce_dtype,
                            shares=rank_samples(self.config, mesh.dp),
                            find_unused=self.pipe is not None)  # a pipeline's last backward may cover one chunk

    def _build_model(self) -> tuple[GPT, Path | None]:
        cfg = self.config
        tokenizer = Path(cfg.data.tokenizer) if cfg.data.tokenizer else None
        if cfg.model.init_from:
            model, init_tokenizer = init_model_from(cfg.model.init_from)
            if cfg.model.is_encoder or isinstance(model, Encoder):  # pretraining needs the MLM head
                model = masked_lm_model(model, cfg.data.sentence_order)
            # The architecture comes from the checkpoint; record it in the resolved config.
            for key, value in model.config.to_dict().items():
                setattr(cfg.model, key, value)
            if tokenizer is None:
                tokenizer = init_tokenizer
            self._say(f"fastlm: initialized from {cfg.model.init_from}")
            return model, tokenizer
        return build_model(cfg), tokenizer

    def _masked_lm_data(self, corpus, model, dp_rank: int, dp_size: int):
        """(training loader, validation batches) of masked sequences for an encoder."""
        from fastlm.data.masking import MaskedLMLoader, masked_eval_batches

        cfg, t, d = self.config, self.config.train, self.config.data
        rule = masked_lm_rule(cfg, corpus, model.config.vocab_size)
        loader = MaskedLMLoader(corpus.train_tokens, rule=rule, seq_len=d.seq_len,
                                global_batch_size=t.global_batch_size, micro_batch_size=t.micro_batch_size,
                                seed=t.seed, rank=dp_rank, world_size=dp_size, shares=cfg.parallel.dp_shares)
        val = masked_eval_batches(corpus.val_tokens, rule=rule, seq_len=d.seq_len, batch_size=t.micro_batch_size,
                                  num_batches=t.eval_batches)
        return loader, val

    def _choose_run_dir(self) -> Path:
        if self.out_dir is not None:
            run_dir = self.out_dir
        elif self.resume:
            run_dir = Path("runs") / self.config.name
        else:
            run_dir = unique_run_dir(Path("runs"), self.config.name)
        if self.resume:
            if not run_dir.is_dir():
                raise CheckpointError(f"--resume: run directory {run_dir} does not exist")
        elif run_dir.exists() and any(run_dir.iterdir()):
            raise FastlmError(f"run directory {run_dir} already exists and is not empty "
                              f"(use --resume to continue it, or another --out)")
        return run_dir

    def _open_run_dir(self, run_dir: Path, tokenizer_path: Path, model: GPT) -> None:
        """Create the run directory with config.toml and tokenizer.json (rank 0 only)."""
        if not self.is_main:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        # The resolved config: every model field filled in, so the run can be rebuilt from it.
        for key, value in model.config.to_dict().items():
            setattr(self.config.model, key, value)
        (run_dir / "config.toml").write_text(self.config.to_toml())
        if Path(tokenizer_path).resolve() != (run_dir / "tokenizer.json").resolve():
            shutil.copyfile(tokenizer_path, run_dir / "tokenizer.json")

    def _autocast(self):
        return autocast_for(self.precision, self.device)

    def _evaluate(self, model, batches, autocast, metrics: MetricsLog, step: int, bar=None) -> dict:
        if self.pipe is not None:
            result = self.pipe.evaluate(batches, autocast)
        else:
            result = evaluate(model, batches, self.device, autocast)
        metrics.log({"step": step, **result})
        self._say(f"step {step}: val_loss {result['val_loss']:.4f}, val_ppl {result['val_ppl']:.2f}", bar)
        return result

    def _say(self, message: str, bar=None) -> None:
        if self.is_main and self.show_progress:
            (bar.write if bar is not None else print)(message, file=sys.stderr)


class _SavedState:
    """What save_checkpoint needs of an optimizer whose state was gathered beforehand."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def masked_lm_rule(config: Config, corpus, model_vocab_size: int):
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


def autocast_for(precision: str, device: torch.device):
    """The forward pass context: nothing for fp32, autocast to bf16/fp16 otherwise."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 on GPU, fp32 on CPU (bf16 autocast is much slower than fp32 on most CPUs)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError('train.precision = "fp16": needs a CUDA GPU (dynamic loss scaling); '
                          'use "bf16" or "fp32" on CPU')
    return precision
