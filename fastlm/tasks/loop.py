"""The fine-tuning loop shared by every task: the trainer's pieces (precision, data parallelism,
AdamW and its schedule, checkpoints, metrics.jsonl, progress bar) around a task's model.

    result = finetune(task, task_config)              # {"run_dir", "metrics": {...}}
    result = evaluate_run(task, run_dir, data=None)   # the validation split, or another file

A task (see fastlm/tasks/base.py) says how to read, encode and batch its data, builds its model
(whose forward(batch) returns a dict with "loss"), and scores predictions. Every dataset record is
read and checked before the model is built, so a malformed file stops the run before training.
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from fastlm.prune.keep import mask_keeper
from fastlm.privacy.training import PrivateTraining, private_metrics, private_step_hooks
from fastlm.privacy.encryption import encryption_for
from fastlm.tasks.adversarial import adversarial_backward
from fastlm.tasks.backbone import build_backbone, input_embedding
from fastlm.tasks.config import TaskConfig, task_config_from_dict
from fastlm.tasks.demo import resolve_source
from fastlm.tasks.replay import TaskReplay
from fastlm.tasks.text import save_tokenizer, task_tokenizer
from fastlm.train.checkpointer import Checkpointer
from fastlm.train.config import check_batch_split, check_checkpoint_key
from fastlm.train.errors import CheckpointError, ConfigError, FastlmError
from fastlm.train.loop import Hooks, Schedule, run_steps
from fastlm.train.metrics import MetricsLog, progress_bar
from fastlm.train.lora import apply_run_lora, save_adapter
from fastlm.train.optim import build_optimizer, lr_at
from fastlm.train.run_dir import RunDirectory, choose_run_dir
from fastlm.train.runtime import Runtime, init_run_mesh, resolve_precision
from fastlm.train.step import TrainStep, autocast_for, task_loss
from fastlm.train.trainer import parallelize_for_run
from fastlm.train.weights import load_weights, save_weights

# ---------------------------------------------------------------- data

def split_paths(tc: TaskConfig) -> tuple[Path, Path | None]:
    t = tc.task
    if not t.train:
        raise ConfigError("task.train: expected a dataset file (JSONL or CSV) or a demo (\"demo:langid\")")
    demo = resolve_source(t.train)
    if demo is not None:
        return demo["train"], Path(t.validation) if t.validation else demo["validation"]
    return Path(t.train), Path(t.validation) if t.validation else None


def read_task_data(task, tc: TaskConfig):
    """(train records, validation records, info): everything checked before any training."""
    train_path, val_path = split_paths(tc)
    train = task.read_split(tc, train_path, None)
    if val_path is None:  # hold out data.val_fraction of the training records
        order = list(range(len(train)))
        random.Random(tc.config.train.seed).shuffle(order)
        n_val = max(1, round(len(train) * tc.config.data.val_fraction))
        if n_val >= len(train):
            raise FastlmError(f"{train_path}: {len(train)} records are too few to hold out a validation split")
        val = [train[i] for i in order[:n_val]]
        train = [train[i] for i in order[n_val:]]
        info = task.make_info(tc, train + val)
    else:
        info = task.make_info(tc, train)
        val = task.read_split(tc, val_path, info)
    return train, val, info


class ExampleSampler:
    """Global batches of example indices, a fresh seeded permutation every epoch; resumable.

    sampling="poisson" (DP-SGD): step s includes each example independently with probability
    batch_size / n, drawn from (seed, s): a batch of variable size."""

    def __init__(self, n: int, batch_size: int, seed: int, sampling: str = "shuffle"):
        self.n, self.batch_size, self.seed, self.sampling = n, batch_size, seed, sampling
        self.epoch, self.pos, self.step = 0, 0, 0

    def _order(self) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 100003 + self.epoch).shuffle(order)
        return order

    def next(self) -> list[int]:
        if self.sampling == "poisson":
            draw = np.random.default_rng([self.seed, self.step, 3]).random(self.n)
            self.step += 1
            return np.flatnonzero(draw < min(1.0, self.batch_size / self.n)).tolist()
        out = []
        while len(out) < self.batch_size:
            order = self._order()
            take = order[self.pos:self.pos + self.batch_size - len(out)]
            out += take
            self.pos += len(take)
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self.step = int(state["epoch"]), int(state["pos"]), int(state.get("step", 0))


# ---------------------------------------------------------------- fine-tuning

def finetune(task, tc: TaskConfig, out_dir: str | os.PathLike | None = None, show_progress: bool = True,
             resume: bool = False) -> dict:
    """Train the task (or, with task.k_folds > 1, one model per fold) and write the run directory.

    resume: continue the run in out_dir from its newest checkpoint (same data order and RNG state,
    so the result is that of an uninterrupted run)."""
    check_checkpoint_key(tc.config)  # an encrypted run without its key fails before anything is read
    if tc.config.checkpoint.key_file:  # recorded absolute (the path, never the key): readers elsewhere find it
        tc = copy.deepcopy(tc)
        tc.config.checkpoint.key_file = str(Path(tc.config.checkpoint.key_file).resolve())
    if tc.config.train.debias != "none" and not hasattr(task, "loss_of"):
        raise ConfigError(f"train.debias = {tc.config.train.debias!r}: only for the classification task, not {task.name}")
    if tc.config.parallel.sync != "every_step":  # the task loop averages gradients every step, nothing else
        raise ConfigError(f'parallel.sync = "{tc.config.parallel.sync}": fastlm finetune synchronises every step '
                          '(local_sgd, async and param_server are for fastlm train)')
    folds = getattr(tc.task, "k_folds", 0)
    if resume and folds > 1:
        raise ConfigError("--resume: not available with task.k_folds (start the cross-validation again)")
    mesh = init_run_mesh(tc.config) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    run_dir = choose_run_dir(tc.name, out_dir, resume, mesh)
    if folds and folds > 1:
        return _cross_validate(task, tc, run_dir, folds, show_progress, mesh)
    train, val, info = read_task_data(task, tc)
    return _fit(task, tc, run_dir, train, val, info, show_progress, mesh, resume)


def _cross_validate(task, tc, run_dir: Path, k: int, show_progress: bool, mesh) -> dict:
    train, val, info = read_task_data(task, tc)
    records = train + val
    if len(records) < k:
        raise ConfigError(f"task.k_folds = {k}: more folds than the {len(records)} records")
    order = list(range(len(records)))
    random.Random(tc.config.train.seed).shuffle(order)
    folds = [order[i::k] for i in range(k)]
    results = []
    for i, held in enumerate(folds):
        held_set = set(held)
        fold_train = [records[j] for j in order if j not in held_set]
        fold_val = [records[j] for j in held]
        _say(show_progress, f"fastlm: fold {i + 1} of {k}")
        results.append(_fit(task, tc, run_dir / f"fold-{i}", fold_train, fold_val, info, show_progress,
                            mesh)["metrics"])
    summary = {"k_folds": k, "folds": results}
    for key, value in results[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            vals = [r[key] for r in results]
            mean = sum(vals) / k
            summary[f"{key}_mean"] = mean
            summary[f"{key}_std"] = math.sqrt(sum((v - mean) ** 2 for v in vals) / k)
    if _is_main():
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
        (run_dir / "config.toml").write_text(tc.to_toml())
    return {"run_dir": str(run_dir), "metrics": summary}


def _fit(task, tc: TaskConfig, run_dir: Path, train_raw, val_raw, info, show_progress, mesh=None,
         resume: bool = False) -> dict:
    cfg, t = tc.config, tc.config.train
    rt = Runtime.from_env(cfg, show_progress, mesh)
    check_batch_split(cfg, rt.dp[0])
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    body, init_tokenizer = task.build_body(tc) if hasattr(task, "build_body") else build_backbone(tc)
    if cfg.model.init_from:  # record the architecture the checkpoint brought (on a copy)
        tc = tc.with_model_architecture(body.config)
    tok, tokenizer_source = _tokenizer(task, tc, run_dir, train_raw, body, init_tokenizer, resume)
    if cfg.model.init_embeddings:
        from fastlm.embeddings.init import init_model_embeddings

        rt.say(init_model_embeddings(body, tok, cfg.model.init_embeddings))
    train, val = task.encode(tc, train_raw, tok, info), task.encode(tc, val_raw, tok, info)
    apply_run_lora(body, cfg.model.lora)  # before the task's head is added: the head trains in full
    # train.replay (None without): before the task model drops the backbone's LM head
    replay = TaskReplay.setup(tc, body, cfg.data.tokenizer or init_tokenizer, rt.is_main and rt.show_progress)
    model = task.build_model(tc, body, info).to(rt.device)
    num_params = sum(p.numel() for p in model.parameters())
    loss_of = task.loss_of(tc) if hasattr(task, "loss_of") else task_loss  # e.g. with a debiasing adversary
    if replay is not None:  # the ReplayModel's forward mixes that loss and the LM loss
        model_and_lm, loss_of = replay.wrap(model, loss_of).to(rt.device), task_loss
    pm = parallelize_for_run(model_and_lm if replay is not None else model, rt, cfg)
    if replay is not None and pm.dp is not None:  # a micro-batch without windows (or examples) leaves a head idle
        pm.dp.find_unused = True
    private = PrivateTraining.setup(cfg, pm, len(train))  # None without DP-SGD
    optimizer = pm.wrap_optimizer(build_optimizer(pm.module, t, rt.device))
    step_hooks = private_step_hooks(private, t) if private is not None else \
        {"grad_clip": t.grad_clip, "micro_backward": adversarial_hook(model, t)}
    step = TrainStep(pm, optimizer, device=rt.device, precision=rt.precision, loss_of=loss_of, **step_hooks,
                     after_step=mask_keeper(pm.module, pm.tensor_parallel, cfg.model.init_from))
    sampler = ExampleSampler(len(train), t.global_batch_size - (replay.count if replay is not None else 0), t.seed,
                             sampling="poisson" if private is not None and cfg.privacy.sampling == "poisson" else "shuffle")
    if replay is not None:
        sampler = replay.sampler(sampler)
    last_step = private.last_step if private is not None else t.steps
    identity = {"task": task.name, "model": tc.config.model.to_dict()}  # what a checkpoint must match
    enc = encryption_for(run_dir, cfg.checkpoint, create_id=True)  # None unless checkpoint.encrypt
    ckpt = Checkpointer(run_dir, pm, optimizer, step.scaler, sampler, identity, every=cfg.checkpoint.every,
                        keep=cfg.checkpoint.keep, is_main=rt.is_main, device=rt.device, enc=enc)
    evaluate_at = _evaluator(task, model, val, info, rt, step.autocast, tc, private, run_dir)
    metrics = bar = None
    with RunDirectory(run_dir, fresh=rt.is_main and not resume, create=rt.is_main) as rd:
        try:
            # Resume before writing the run files: a checkpoint that does not fit changes nothing.
            start = ckpt.start_step(resume, rt.say)
            if private is not None:
                private.engine.step = start  # the noise of step s is drawn from (seed, s)
                rt.say(f"fastlm: {private.describe()}")
            _write_run_files(rt, run_dir, tc, info, tok, tokenizer_source)
            metrics = MetricsLog(run_dir if rt.is_main else None, tensorboard=t.tensorboard)
            metrics.truncate_after(start)
            rt.say(f"fastlm: {task.name}: {len(train)} training and {len(val)} validation examples, "
                   f"{num_params / 1e6:.2f}M parameters, {t.steps} steps of {t.global_batch_size}, {rt.precision} on "
                   f"{rt.device}" + (f", adversarial {t.adversarial}" if t.adversarial != "none" else ""))
            bar = progress_bar(last_step, start, rt.is_main and rt.show_progress)
            schedule = Schedule(start, last_step, lambda i: lr_at(i, t), t.log_every, t.eval_every, "examples_per_s",
                                t.global_batch_size)
            hooks = Hooks(evaluate=lambda done, bar: evaluate_at(done, bar, metrics),
                          save=lambda done: ckpt.maybe_save(done, last_step), started=rd.started)
            batches = replay.batches(task, train, sampler, rt, t) if replay is not None else \
                _batches(task, train, sampler, rt, t)
            result = run_steps(step, batches, schedule, hooks, metrics, bar)
            result = result or evaluate_at(last_step, bar, None)  # None: resumed a finished run
        finally:
            for closing in (bar, metrics):
                if closing is not None:
                    closing.close()
    if rt.is_main:
        save_weights(model, run_dir, enc)
        if cfg.model.lora is not None and hasattr(body, "config"):  # the adapters alone, in PEFT's layout
            save_adapter(body, body.config, cfg.model.lora, run_dir, cfg.model.init_from)
        write_outputs(task, run_dir, *result, info)
        if private is not None and private.stop_message(t.steps):
            print(private.stop_message(t.steps))
    return {"run_dir": str(run_dir), "metrics": result[0], "model": model}


def _tokenizer(task, tc: TaskConfig, run_dir: Path, train_raw, body, init_tokenizer, resume: bool):
    """(the task's tokenizer or None, the file it came from or None): a resumed run's own, data.tokenizer,
    model.init_from's, or one trained on the training texts."""
    texts = task.tokenizer_texts(train_raw)  # None: the task has no text input (speech)
    if texts is None:
        return None, None
    cfg = tc.config
    saved = run_dir / "tokenizer.json" if resume and (run_dir / "tokenizer.json").is_file() else None
    tok = task_tokenizer(texts, cfg.data.vocab_size, body.config.vocab_size, saved or init_tokenizer,
                         None if saved else cfg.data.tokenizer)
    return tok, None if cfg.data.tokenizer or init_tokenizer is None else init_tokenizer


def _write_run_files(rt, run_dir: Path, tc: TaskConfig, info: dict, tok, tokenizer_source) -> None:
    if not rt.is_main:
        return
    (run_dir / "config.toml").write_text(tc.to_toml())
    (run_dir / "task_info.json").write_text(json.dumps(info, indent=1, ensure_ascii=False))
    if tok is not None:
        save_tokenizer(tok, run_dir, tokenizer_source)


def _batches(task, train: list, sampler: ExampleSampler, rt, t):
    """next_batches(): this rank's micro-batches (collated examples) of the next global batch."""
    dp_size, dp_rank = rt.dp
    per_rank = t.global_batch_size // dp_size

    def next_batches() -> list:
        if sampler.sampling == "poisson":  # a variable number: contiguous, nearly equal parts
            indices = np.array_split(np.asarray(sampler.next(), dtype=np.int64), dp_size)[dp_rank].tolist()
            if not indices:
                return [{}]  # nothing for this rank: DP-SGD adds zeros, so that the collectives match
        else:
            indices = sampler.next()[dp_rank * per_rank:(dp_rank + 1) * per_rank]
        return [task.collate([train[i] for i in indices[k:k + t.micro_batch_size]])
                for k in range(0, len(indices), t.micro_batch_size)]
    return next_batches


def _evaluator(task, model, val: list, info: dict, rt, autocast, tc, private=None, run_dir: Path | None = None):
    """evaluate_at(step, bar, metrics) -> (metrics, predictions) of the validation split, logged
    (with DP-SGD's epsilon)."""
    def evaluate_at(step: int, bar, metrics):
        result, predictions = task.evaluate(model, val, info, rt.device, autocast, tc.config.train.micro_batch_size, tc)
        if metrics is not None:
            privacy = private_metrics(private, step, run_dir if rt.is_main else None)
            metrics.log({"step": step, **{f"val_{k}": v for k, v in result.items() if _is_number(v)}, **privacy})
            rt.say(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items() if _is_number(v)), bar)
        return result, predictions
    return evaluate_at


def adversarial_hook(model, t):
    """TrainStep's micro_backward for [train] adversarial = fgm | pgd (None without)."""
    if t.adversarial == "none":
        return None
    embedding = input_embedding(model)

    def micro_backward(loss_fn, scale, clean_context, final_context, batch=None):
        clean, adv = adversarial_backward(loss_fn, embedding, t.adversarial, t.adversarial_epsilon,
                                          t.adversarial_steps, t.adversarial_alpha or None, scale=scale,
                                          clean_context=clean_context, final_context=final_context)
        return clean, {"adversarial_loss": adv}
    return micro_backward


def write_outputs(task, out_dir: Path, result: dict, predictions: list[dict], info: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
        for p in predictions:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    task.report(out_dir, result, predictions, info)


# ---------------------------------------------------------------- evaluating a finished run

def load_task_run(task, run_dir: str | Path, device="cpu"):
    """(task config, model with the run's weights, tokenizer, info) of a finished task run."""
    import tomllib

    from fastlm.data.tokenizer import load_tokenizer

    run_dir = Path(run_dir)
    uses_tokenizer = getattr(task, "uses_tokenizer", True)
    for name in ("config.toml", "model.safetensors", "task_info.json") + (("tokenizer.json",) if uses_tokenizer else ()):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"{run_dir} is not a finished fastlm {task.name} run: {name} is missing")
    tc = task_config_from_dict(tomllib.loads((run_dir / "config.toml").read_text()), task.Section,
                               name=run_dir.name)
    tc.config.model.init_from = None  # the architecture is recorded; the weights are the run's
    info = json.loads((run_dir / "task_info.json").read_text())
    body, _ = task.build_body(tc) if hasattr(task, "build_body") else build_backbone(tc)
    apply_run_lora(body, tc.config.model.lora)
    model = task.build_model(tc, body, info)
    load_weights(model, run_dir, device, what=f"the {task.name} model",
                 enc=encryption_for(run_dir, tc.config.checkpoint))
    return tc, model.to(device), load_tokenizer(run_dir / "tokenizer.json") if uses_tokenizer else None, info


def evaluate_run(task, run_dir: str | Path, data: str | None = None, out_dir: str | Path | None = None,
                 groups: str | None = None) -> dict:
    """Score a finished run on `data` (default: its validation split); writes metrics and predictions
    to out_dir (default RUN_DIR/eval). groups: the data column naming each example's group (the
    task then also writes a fairness report)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tc, model, tok, info = load_task_run(task, run_dir, device)
    if groups is not None:
        if not hasattr(tc.task, "group_field"):
            raise ConfigError(f"--groups: group fairness reports are for the classification task, not {task.name}")
        tc.task.group_field = groups  # tc was read from the run directory: the run's files stay as they are
    if data is not None:
        raw = task.read_split(tc, Path(data), info)
    else:
        _, raw, _ = read_task_data(task, tc)
    examples = task.encode(tc, raw, tok, info)
    autocast = autocast_for(resolve_precision(tc.config.train.precision, device), device)
    result, predictions = task.evaluate(model, examples, info, device, autocast, tc.config.train.micro_batch_size, tc)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "eval"
    write_outputs(task, out, result, predictions, info)
    return {"metrics": result, "out_dir": str(out)}


# ---------------------------------------------------------------- helpers

def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _say(show: bool, message: str) -> None:
    if show and _is_main():
        print(message, file=sys.stderr)


