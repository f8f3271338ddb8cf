"""The fine-tuning loop shared by every task: the trainer's pieces (precision, data parallelism,
AdamW and its schedule, checkpoints, metrics.jsonl, progress bar) around a task's model.

    result = finetune(task, task_config)              # {"run_dir", "metrics": {...}}
    result = evaluate_run(task, run_dir, data=None)   # the validation split, or another file

A task (see fastlm/tasks/base.py) says how to read, encode and batch its data, builds its model
(whose forward(batch) returns a dict with "loss"), and scores predictions. Every dataset record is
read and checked before the model is built, so a malformed file stops the run before training.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import safetensors.torch
import torch
from tqdm.auto import tqdm

from fastlm.tasks.adversarial import adversarial_backward
from fastlm.tasks.backbone import build_backbone, input_embedding
from fastlm.tasks.config import TaskConfig, task_config_from_dict
from fastlm.tasks.demo import resolve_source
from fastlm.tasks.text import save_tokenizer, task_tokenizer
from fastlm.train.config import check_batch_split
from fastlm.train.errors import CheckpointError, ConfigError, FastlmError
from fastlm.train.metrics import MetricsLog
from fastlm.train.optim import build_optimizer, lr_at, set_lr
from fastlm.train.run import unique_run_dir
from fastlm.train.run_dir import first_missing, undo_run_dir
from fastlm.train.trainer import autocast_for, resolve_precision

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
    """Global batches of example indices, a fresh seeded permutation every epoch; resumable."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.pos = 0, 0

    def _order(self) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 100003 + self.epoch).shuffle(order)
        return order

    def next(self) -> list[int]:
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
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


# ---------------------------------------------------------------- fine-tuning

def finetune(task, tc: TaskConfig, out_dir: str | os.PathLike | None = None, show_progress: bool = True,
             resume: bool = False) -> dict:
    """Train the task (or, with task.k_folds > 1, one model per fold) and write the run directory.

    resume: continue the run in out_dir from its newest checkpoint (same data order and RNG state,
    so the result is that of an uninterrupted run)."""
    if resume:
        if out_dir is None or not Path(out_dir).is_dir():
            raise CheckpointError(f"--resume: run directory {out_dir} does not exist")
        if getattr(tc.task, "k_folds", 0) > 1:
            raise ConfigError("--resume: not available with task.k_folds (start the cross-validation again)")
        run_dir = Path(out_dir)
    else:
        run_dir = _choose_run_dir(tc, out_dir)
    mesh = _init_mesh(tc) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    folds = getattr(tc.task, "k_folds", 0)
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
    is_main = _is_main()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() \
        else torch.device("cpu")
    precision = resolve_precision(t.precision, device)
    autocast = autocast_for(precision, device)
    dp_size, dp_rank = (mesh.dp, mesh.dp_rank) if mesh is not None else (1, 0)
    check_batch_split(cfg, dp_size)

    torch.manual_seed(t.seed)
    random.seed(t.seed)
    body, init_tokenizer = task.build_body(tc) if hasattr(task, "build_body") else build_backbone(tc)
    texts = task.tokenizer_texts(train_raw)  # None: the task has no text input (speech)
    saved_tokenizer = run_dir / "tokenizer.json" if resume and (run_dir / "tokenizer.json").is_file() else None
    tok = None if texts is None else task_tokenizer(texts, cfg.data.vocab_size, body.config.vocab_size,
                                                    saved_tokenizer or init_tokenizer,
                                                    None if saved_tokenizer else cfg.data.tokenizer)
    train = task.encode(tc, train_raw, tok, info)
    val = task.encode(tc, val_raw, tok, info)
    model = task.build_model(tc, body, info).to(device)
    dp = None
    if mesh is not None and mesh.dp > 1:
        from fastlm.parallel import DataParallel

        p = cfg.parallel
        dp = DataParallel(model, mesh, bucket_mb=p.bucket_mb,
                          grad_reduce_dtype=None if p.grad_reduce_dtype == "fp32" else p.grad_reduce_dtype)
    optimizer = build_optimizer(model, t, device)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    embedding = input_embedding(model) if t.adversarial != "none" else None
    sampler = ExampleSampler(len(train), t.global_batch_size, t.seed)
    per_rank = t.global_batch_size // dp_size

    made = first_missing(run_dir)
    metrics = bar = None
    fresh = is_main and not resume
    start = 0
    identity = {"task": task.name, "model": tc.config.model.to_dict()}
    try:
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.toml").write_text(tc.to_toml())
            (run_dir / "task_info.json").write_text(json.dumps(info, indent=1, ensure_ascii=False))
            if tok is not None:
                save_tokenizer(tok, run_dir, None if cfg.data.tokenizer or init_tokenizer is None else init_tokenizer)
        metrics = MetricsLog(run_dir if is_main else None, tensorboard=t.tensorboard)
        if resume:
            from fastlm.train.checkpoint import latest_checkpoint, load_checkpoint

            ckpt = latest_checkpoint(run_dir)
            if ckpt is None:
                raise CheckpointError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
            start = load_checkpoint(ckpt, model, optimizer, scaler, sampler, identity, device)
            metrics.truncate_after(start)
            _say(show_progress and is_main, f"fastlm: resumed from {ckpt} (step {start})")
        _say(show_progress and is_main, f"fastlm: {task.name}: {len(train)} training and {len(val)} validation "
             f"examples, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {t.steps} steps of "
             f"{t.global_batch_size}, {precision} on {device}" + (f", adversarial {t.adversarial}"
                                                                  if embedding is not None else ""))
        bar = tqdm(total=t.steps, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr,
                   disable=not (is_main and show_progress))
        result = None
        step_time, timed = 0.0, 0
        for step in range(start, t.steps):
            t0 = time.perf_counter()
            lr = lr_at(step, t)
            set_lr(optimizer, lr)
            indices = sampler.next()[dp_rank * per_rank:(dp_rank + 1) * per_rank]
            micro = [indices[i:i + t.micro_batch_size] for i in range(0, len(indices), t.micro_batch_size)]
            loss, adv_loss, grad_norm = _train_step(task, model, dp, optimizer, scaler, autocast, device,
                                                    [[train[i] for i in m] for m in micro], embedding, t,
                                                    cfg.train.grad_clip)
            fresh = False
            done = step + 1
            step_time, timed = step_time + time.perf_counter() - t0, timed + 1
            if done % t.log_every == 0 or done == t.steps:
                if dp is not None:
                    loss = dp.mean_over_ranks(loss)
                loss = loss.item()
                if not math.isfinite(loss):
                    raise FastlmError(f"the loss became {loss} at step {done} (try a lower train.lr)")
                record = {"step": done, "loss": loss, "lr": lr, "grad_norm": grad_norm.item(),
                          "examples_per_s": t.global_batch_size * timed / step_time}
                if adv_loss is not None:
                    record["adversarial_loss"] = adv_loss.item()
                step_time, timed = 0.0, 0
                metrics.log(record)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update(1)
            if done == t.steps or (t.eval_every and done % t.eval_every == 0):
                result, predictions = task.evaluate(model, val, info, device, autocast, t.micro_batch_size, tc)
                metrics.log({"step": done, **{f"val_{k}": v for k, v in result.items() if _is_number(v)}})
                (bar.write if show_progress and is_main else (lambda *_a, **_k: None))(
                    f"step {done}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items() if _is_number(v)))
            every = cfg.checkpoint.every
            if every and is_main and (done % every == 0 or done == t.steps):
                from fastlm.train.checkpoint import save_checkpoint

                save_checkpoint(run_dir, done, model, optimizer, scaler, sampler, identity, cfg.checkpoint.keep)
        if result is None:  # resumed a finished run
            result, predictions = task.evaluate(model, val, info, device, autocast, t.micro_batch_size, tc)
    except BaseException:
        if fresh:
            undo_run_dir(run_dir, made)
        raise
    finally:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
    if is_main:
        safetensors.torch.save_model(model, str(run_dir / "model.safetensors"))
        write_outputs(task, run_dir, result, predictions, info)
    return {"run_dir": str(run_dir), "metrics": result, "model": model}


def _train_step(task, model, dp, optimizer, scaler, autocast, device, micro_batches, embedding, t, clip):
    n = len(micro_batches)
    total = torch.zeros((), device=device)
    adv_total = torch.zeros((), device=device) if embedding is not None else None
    runner = dp if dp is not None else model
    for i, examples in enumerate(micro_batches):
        batch = {k: v.to(device, non_blocking=True) for k, v in task.collate(examples).items()}
        last = i == n - 1
        sync_ctx = (lambda: nullcontext()) if dp is None or last else dp.no_sync

        def loss_fn():
            with autocast:
                return runner(batch)["loss"].float()

        if embedding is not None:
            grad_scale = 1.0 / n if scaler is None else scaler.get_scale() / n
            clean, adv = adversarial_backward(
                loss_fn, embedding, t.adversarial, t.adversarial_epsilon, t.adversarial_steps,
                t.adversarial_alpha or None, scale=grad_scale,
                clean_context=dp.no_sync() if dp is not None else None, final_context=sync_ctx())
            total += clean / n
            adv_total += adv / n
        else:
            with sync_ctx():
                loss = loss_fn() / n
                (scaler.scale(loss) if scaler is not None else loss).backward()
            total += loss.detach()
    if dp is not None:
        dp.finish_grad_sync()
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip or float("inf"))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, adv_total, grad_norm


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
    model = task.build_model(tc, body, info)
    try:
        safetensors.torch.load_model(model, str(run_dir / "model.safetensors"), strict=True, device=str(device))
    except Exception as e:  # noqa: BLE001 - several error types for foreign or truncated files
        raise CheckpointError(f"{run_dir / 'model.safetensors'} does not fit the {task.name} model: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    return tc, model.to(device), load_tokenizer(run_dir / "tokenizer.json") if uses_tokenizer else None, info


def evaluate_run(task, run_dir: str | Path, data: str | None = None, out_dir: str | Path | None = None) -> dict:
    """Score a finished run on `data` (default: its validation split); writes metrics and predictions
    to out_dir (default RUN_DIR/eval)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tc, model, tok, info = load_task_run(task, run_dir, device)
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

def _init_mesh(tc: TaskConfig):
    from fastlm.parallel import init_mesh

    p = tc.config.parallel
    mesh = init_mesh(dp=p.dp, tp=p.tp, pp=p.pp, timeout_s=p.timeout_s)
    mesh.check_same("config", tc.config.to_dict())
    return mesh


def _choose_run_dir(tc: TaskConfig, out_dir) -> Path:
    """--out, or a new runs/<name>[-time]. Under torchrun, runs/<name> on every rank (only rank 0,
    which writes it, checks it is free)."""
    if out_dir is not None:
        run_dir = Path(out_dir)
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        run_dir = Path("runs") / tc.name
    else:
        run_dir = unique_run_dir(Path("runs"), tc.name)
    if _is_main() and run_dir.exists() and any(run_dir.iterdir()):
        raise FastlmError(f"run directory {run_dir} already exists and is not empty (use another --out)")
    return run_dir


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _say(show: bool, message: str) -> None:
    if show and _is_main():
        print(message, file=sys.stderr)


