"""Asynchronous parameter averaging: convergence against synchronous training, step time under a communication delay.

    python benchmarks/async_sync.py [--steps 200] [--sync-every 4] [--staleness 2] [--delay-ms 100] [--param-servers 2]

Two data-parallel processes (torchrun, gloo) train the same small LLaMA-style model with
  every_step   gradients all-reduced at every step (synchronous data parallelism)
  local_sgd    local steps, parameters averaged every --sync-every steps (each rank waits for it)
  async        the same averaging in the background, applied on arrival, at most --staleness steps late
  param_server_s0  parameter servers (torch.distributed.rpc, --param-servers shards on the first ranks): each
               worker pushes its gradient every step and waits for the fresh parameters (max_staleness 0)
  param_server the same, the worker running up to --staleness steps ahead of its last pull
and report the validation loss and perplexity after --steps steps (convergence), and the mean step
time when every parameter average is delayed by --delay-ms (FASTLM_TEST_COMM_DELAY: a slow network),
which local SGD waits for and async hides. The delay is injected into the parameter averages only:
every_step is timed without it. The parameter servers get it on every push (every step: they communicate
every step), so their rows carry sync_every times the delay per step of the averaging modes.
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

from dp_runs import SEQ_LEN, train

from fastlm.bench import print_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    parser.add_argument("--sync-every", type=int, default=4)
    parser.add_argument("--staleness", type=int, default=2)
    parser.add_argument("--delay-ms", type=float, default=100.0)
    parser.add_argument("--param-servers", type=int, default=2)
    args = parser.parse_args()
    common = [f"train.steps={args.steps}", f"train.global_batch_size={args.batch}", "train.micro_batch_size=4",
              f"train.eval_every={args.steps}", f"train.warmup_steps={args.steps // 10}"]
    modes = {"every_step": [],
             "local_sgd": ["parallel.sync=\"local_sgd\"", f"parallel.sync_every={args.sync_every}"],
             "async": ["parallel.sync=\"async\"", f"parallel.sync_every={args.sync_every}",
                       f"parallel.max_staleness={args.staleness}"],
             "param_server_s0": ["parallel.sync=\"param_server\"", f"parallel.param_servers={args.param_servers}",
                                 "parallel.max_staleness=0"],
             "param_server": ["parallel.sync=\"param_server\"", f"parallel.param_servers={args.param_servers}",
                              f"parallel.max_staleness={args.staleness}"]}
    tokens = args.batch * SEQ_LEN
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in modes.items():
            final = [m for m in train(Path(tmp) / name, [*common, *extra]) if "val_loss" in m][-1]
            delayed = {} if name == "every_step" else {"FASTLM_TEST_COMM_DELAY": str(args.delay_ms / 1e3)}
            timed = train(Path(tmp) / f"{name}-timed", [*common, *extra, "train.eval_every=0"], delayed)
            steps = [tokens / m["tokens_per_s"] for m in timed if "tokens_per_s" in m]
            rows.append({"case": name, "val_loss": final["val_loss"], "val_ppl": math.exp(final["val_loss"]),
                         "step_ms": statistics.fmean(steps[len(steps) // 4:]) * 1e3,  # the mean: delays are periodic
                         "delay_ms": 0.0 if name == "every_step" else args.delay_ms,
                         "delays_per_step": 0.0 if name == "every_step" else
                         1.0 if name.startswith("param_server") else 1 / args.sync_every})
    local = next(r for r in rows if r["case"] == "local_sgd")
    for row in rows:
        row["vs_local_sgd_time"] = local["step_ms"] / row["step_ms"]
    print(f"2 processes, {args.steps} steps of {args.batch} x {SEQ_LEN} tokens, sync_every {args.sync_every}, "
          f"max_staleness {args.staleness}; step times with {args.delay_ms:g} ms injected per parameter average")
    print_table(rows)


if __name__ == "__main__":
    main()
