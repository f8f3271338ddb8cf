"""`fastlm train CONFIG` with a [federated] section: rounds of client training and server aggregation.

    summary = Trainer(config).fit()          # Trainer.fit hands a federated config to fit_federated

A round: the server samples clients_per_round clients; each starts from the global weights and takes
local_steps steps of the library's TrainStep on its own data (fastlm.federated.client); their weighted
updates are summed, in the clear or by secure aggregation (fastlm.federated.aggregate); the server
moves the global model by the weighted average (fastlm.federated.server).

Two ways to run, same math: one process simulates every client in turn; under torchrun each
data-parallel rank hosts a client group (client c on rank c mod ranks, its data position and optimizer
state with it) and trains the round's clients it hosts, the sum goes to the server
(rank 0) through the mesh's data-parallel group, and rank 0 broadcasts the new global model.
RUN_DIR/metrics.jsonl gets a line per round ("step" is the round) and the validation of the global
model every federated.eval_every rounds; checkpoints every checkpoint.every rounds (--resume continues
exactly: fastlm.federated.checkpoint); model.safetensors is the final global model.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time

import numpy as np
import torch
import torch.distributed as dist

from fastlm.federated.aggregate import Aggregation
from fastlm.federated.checkpoint import FederatedCheckpointer
from fastlm.federated.client import OptimizerStates, Proximal, flat_parameters, load_flat, train_client
from fastlm.federated.partition import ClientData, partition_windows
from fastlm.federated.server import client_dp_epsilon, contribution, global_update, select_clients
from fastlm.train.errors import ConfigError
from fastlm.train.optim import lr_at


def client_datasets(config, corpus) -> list[ClientData]:
    """Every client's data (the same on every process: each rank then trains the clients it is given)."""
    f, d, t = config.federated, config.data, config.train
    eos = corpus.eos_id if d.pack else None
    common = dict(seq_len=d.seq_len, batch_size=t.global_batch_size, micro_batch_size=t.micro_batch_size,
                  seed=t.seed, pack_eos_id=eos)
    if f.partition == "files":
        return [ClientData(tokens, np.arange(len(tokens) // d.seq_len), client=c, **common)
                for c, tokens in enumerate(file_tokens(config, corpus))]
    parts = partition_windows(len(corpus.train_tokens) // d.seq_len, clients=f.clients, partition=f.partition,
                              alpha=f.alpha, sources=f.sources, seed=t.seed)
    return [ClientData(corpus.train_tokens, part, client=c, **common) for c, part in enumerate(parts)]


def file_tokens(config, corpus) -> list[np.ndarray]:
    """partition = "files": each data file's training documents, prepared as the run's corpus prepares
    them (data.deidentify, then the validation split by a hash of the text, so no client trains on the
    run's validation documents, then data.counterfactual's mirrored copies) and tokenized with the run's
    tokenizer, eos after each. Tokenized at the start of the run (the files are not cached apart)."""
    from fastlm.data.encode_pool import encode_documents
    from fastlm.data.prepare import _hash_fraction
    from fastlm.data.sources import resolve_source
    from fastlm.train.data import counterfactual_of, deid_options

    d, f = config.data, config.federated
    files = resolve_source(d.source, text_field=d.text_field, builtin_modules=d.builtin_modules).files
    if len(files) != f.clients:
        raise ConfigError(f"federated.partition = \"files\": data.source has {len(files)} files, expected "
                          f"federated.clients = {f.clients} (one client per file)")
    deid, augment = deid_options(d), counterfactual_of(d)
    tok, out = corpus.tokenizer(), []
    for path in files:
        docs = resolve_source(str(path), text_field=d.text_field).documents()
        if deid:
            from fastlm.data.deid.corpus import deid_settings, deidentify_documents

            docs = deidentify_documents(docs, deid_settings(deid["deidentify"], deid["deid_operation"],
                                                            deid["deid_key"]))
        docs = [doc for doc in docs if _hash_fraction(doc) >= d.val_fraction]
        if augment is not None:
            docs = [text for doc in docs for text in dict.fromkeys([doc, augment.swap(doc)])]
        ids = encode_documents(tok, docs, np.dtype(np.int64), corpus.eos_id)
        tokens = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        if len(tokens) < d.seq_len:
            raise ConfigError(f"federated.partition = \"files\": {path} has {len(tokens)} training tokens, fewer "
                              f"than one window of data.seq_len = {d.seq_len}")
        out.append(tokens)
    return out


class FederatedRounds:
    """The round loop's state: the model and its one TrainStep, the clients, the aggregation."""

    def __init__(self, config, pm, step, clients: list[ClientData], rank: int = 0, world_size: int = 1, group=None):
        self.config, self.fed, self.train = config, config.federated, config.train
        self.pm, self.step, self.clients = pm, step, clients
        self.rank, self.world_size, self.group = rank, world_size, group
        self.params = [p for p in pm.module.parameters() if p.requires_grad]
        self.states = OptimizerStates(keep=self.fed.client_state == "keep")
        self.client_steps: dict[int, int] = {}
        self.mean_samples = sum(c.num_samples for c in clients) / len(clients)
        numel = sum(p.numel() for p in self.params) + 1  # the update and its weight
        self.aggregation = Aggregation(self.fed, self.train.seed, numel, group, rank, world_size)
        schedule = dataclasses.replace(self.train, steps=self.fed.rounds * self.fed.local_steps)
        self.lr_of = lambda i: lr_at(i, schedule)  # warmup and cosine over all local steps of the run

    def run_round(self, r: int) -> dict:
        """Round r (0-based): returns its metrics line (without validation)."""
        f, t0 = self.fed, time.perf_counter()
        selected = select_clients(r, f.clients, f.per_round(), self.train.seed)
        mine = [c for c in selected if c % self.world_size == self.rank]  # this process's client group hosts them
        global_flat = flat_parameters(self.params)
        proximal = self.step.after_grad_sync
        if isinstance(proximal, Proximal):
            proximal.set_anchor(global_flat)
        contributions, loss_sum = {}, torch.zeros(2, dtype=torch.float64)
        for c in mine:
            load_flat(self.params, global_flat)
            data = self.clients[c]
            loss = train_client(self.step, data, self.states, first_step=r * f.local_steps, local_steps=f.local_steps,
                                lr_of=self.lr_of, client_steps=self.client_steps)
            update = flat_parameters(self.params) - global_flat
            contributions[c] = contribution(update, data.num_samples / self.mean_samples, f.client_dp)
            loss_sum += torch.tensor([float(loss) * data.num_samples, data.num_samples], dtype=torch.float64)
        summed = self.aggregation.run(r, selected, contributions)
        new_global = self._server_step(global_flat, summed, r)
        load_flat(self.params, new_global)
        if self.step.after_step is not None:  # pruning: the server's noise (client_dp) must not un-prune either
            self.step.after_step()
        if self.world_size > 1:
            dist.all_reduce(loss_sum, group=self.group)
        record = {"step": r + 1, "round": r + 1, "loss": float(loss_sum[0] / loss_sum[1]), "clients": len(selected),
                  "lr": self.lr_of((r + 1) * f.local_steps - 1), "round_s": time.perf_counter() - t0,
                  "bytes_sent": summed.bytes_sent, "plain_bytes": summed.plain_bytes}
        if f.secure_aggregation:
            record.update(survivors=len(summed.survivors), dropped=len(summed.dropped),
                          discarded=summed.discarded is not None)
        if f.client_dp is not None:
            record["epsilon"] = client_dp_epsilon(f.client_dp, clients=f.clients, per_round=f.per_round(), rounds=r + 1)
        self.last = summed
        return record

    def _server_step(self, global_flat: torch.Tensor, summed, r: int) -> torch.Tensor:
        """The new global weights on the server, broadcast to every process (unchanged if the round was discarded)."""
        new_global = global_flat.clone()
        if self.rank == 0 and summed.total is not None:
            step = global_update(summed.total, client_dp=self.fed.client_dp, per_round=self.fed.per_round(),
                                 seed=self.train.seed, round_index=r)
            new_global = (global_flat.double() + step).float()
        if self.world_size > 1:
            dist.broadcast(new_global, src=self.group_rank0(), group=self.group)
        return new_global

    def group_rank0(self) -> int:
        return dist.get_global_rank(self.group, 0) if self.group is not None else 0


def fit_federated(trainer) -> dict:
    """Trainer.fit for a config with [federated] clients > 0."""
    from fastlm.train.data import check_tokenizer_fits, run_corpus, validation_batches
    from fastlm.privacy.encryption import encryption_for
    from fastlm.train.metrics import MetricsLog, progress_bar
    from fastlm.train.optim import build_optimizer
    from fastlm.train.run_dir import RunDirectory, choose_run_dir
    from fastlm.train.runtime import init_run_mesh
    from fastlm.train.step import TrainStep
    from fastlm.train.trainer import parallelize_for_run, resolved_config
    from fastlm.train.weights import save_weights
    from fastlm.prune.keep import carry_pruning, mask_keeper

    cfg, t, f, rt = trainer.config, trainer.config.train, trainer.config.federated, trainer.rt
    rt.mesh = init_run_mesh(cfg) if rt.world_size > 1 else None
    run_dir = choose_run_dir(cfg.name, trainer.out_dir, trainer.resume, rt.mesh)
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    model, tokenizer_path = trainer._build_model()
    corpus = run_corpus(cfg, tokenizer_path, rt.is_main and rt.show_progress)
    trainer.resolved = resolved_config(cfg, model.config, tokenizer_path, corpus)
    trainer.corpus_meta = corpus.meta
    check_tokenizer_fits(corpus, model.config)
    clients = client_datasets(cfg, corpus)
    val_batches = validation_batches(cfg, corpus, model.config)
    pm = parallelize_for_run(model.to(rt.device), rt, cfg)
    optimizer = build_optimizer(pm.module, t, rt.device)
    params = [p for p in pm.module.parameters() if p.requires_grad]
    proximal = Proximal(params, f.mu) if f.algorithm == "fedprox" else None
    step = TrainStep(pm, optimizer, device=rt.device, precision=rt.precision, grad_clip=t.grad_clip,
                     after_grad_sync=proximal, after_step=mask_keeper(pm.module, pm.tensor_parallel, cfg.model.init_from))
    dp_size, dp_rank = rt.dp
    group = rt.mesh.dp_group if rt.mesh is not None else None
    rounds = FederatedRounds(cfg, pm, step, clients, dp_rank, dp_size, group)
    sizes = [c.num_samples for c in clients]
    enc = encryption_for(run_dir, cfg.checkpoint, create_id=True)  # None unless checkpoint.encrypt
    identity = {"model": model.config.to_dict(), "corpus_key": corpus.key,
                "clients": [f.clients, f.partition, f.alpha, f.sources, sizes]}  # what a checkpoint must match
    ckpt = FederatedCheckpointer(run_dir, rounds, identity, every=cfg.checkpoint.every, keep=cfg.checkpoint.keep,
                                 is_main=rt.is_main, device=rt.device, enc=enc)
    metrics = bar = result = None
    with RunDirectory(run_dir, fresh=rt.is_main and not trainer.resume, create=rt.is_main) as rd:
        try:
            start = ckpt.resume(rt.say) if trainer.resume else 0
            trainer._write_run_files(run_dir, corpus.tokenizer_path)
            metrics = MetricsLog(run_dir if rt.is_main else None, tensorboard=t.tensorboard)
            metrics.truncate_after(start)
            rt.say(f"fastlm: federated {f.algorithm}, {f.clients} clients ({f.partition}: {min(sizes)} to {max(sizes)} "
                   f"windows each), {f.per_round()} per round x {f.rounds} rounds of {f.local_steps} local steps"
                   + (", secure aggregation" if f.secure_aggregation else "")
                   + (f", {dp_size} processes" if dp_size > 1 else ""))
            evaluate_at = _evaluator(pm, val_batches, step.autocast, rt)
            result = evaluate_at(0, None, metrics) if start == 0 else None
            bar = progress_bar(f.rounds, start, rt.is_main and rt.show_progress)
            result = _run_rounds(rounds, start, evaluate_at, ckpt, metrics, bar, rd, rt) or result
            if result is None:  # resumed a finished run: its last evaluation is already logged
                result = evaluate_at(f.rounds, bar, None)
        finally:
            for closing in (bar, metrics):
                if closing is not None:
                    closing.close()
    final = pm.full_model(rt.is_main)
    if rt.is_main:
        save_weights(final, run_dir, enc)
        carry_pruning(final, run_dir, cfg.model.init_from)
        print(f"validation perplexity: {result['val_ppl']:.2f} (loss {result['val_loss']:.4f})")
        print(f"run directory: {run_dir}")
    trainer.model = pm.module
    return {"step": f.rounds, "rounds": f.rounds, "val_loss": result["val_loss"], "val_ppl": result["val_ppl"],
            "run_dir": str(run_dir)}


def _run_rounds(rounds: FederatedRounds, start: int, evaluate_at, ckpt, metrics, bar, rd, rt) -> dict | None:
    """Rounds start .. federated.rounds: each logged, evaluated and checkpointed when due; returns the last
    evaluation's result (None if none ran)."""
    f, result = rounds.fed, None
    for r in range(start, f.rounds):
        record = rounds.run_round(r)
        rd.started()
        if not math.isfinite(record["loss"]):
            raise ConfigError(f"the loss became {record['loss']} in round {r + 1} (try a lower train.lr)")
        if record.get("discarded"):
            rt.say(f"round {r + 1}: discarded ({rounds.last.discarded}); the global model is unchanged", bar)
        metrics.log(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", refresh=False)
        bar.update(1)
        done = r + 1
        if done == f.rounds or (f.eval_every and done % f.eval_every == 0):
            result = evaluate_at(done, bar, metrics)
        ckpt.maybe_save(done, f.rounds)
    return result


def _evaluator(pm, batches, autocast, rt):
    from fastlm.train.evaluate import evaluate

    def evaluate_at(done: int, bar, metrics) -> dict:
        result = evaluate(pm.module, batches, rt.device, autocast)
        if metrics is not None:
            metrics.log({"step": done, "round": done, **result})
            rt.say(f"round {done}: val_loss {result['val_loss']:.4f}, val_ppl {result['val_ppl']:.2f}", bar)
        return result
    return evaluate_at
