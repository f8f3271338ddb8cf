"""Step time on ranks of unequal speed: uniform shares vs static dp_shares vs dp_shares = "dynamic", same run.

    python benchmarks/dynamic_shares.py [--slow-ms 20] [--steps 40] [--static 3 1]

Two data-parallel processes (torchrun, gloo) train the same small LLaMA-style model; rank 1 is slowed
artificially by --slow-ms milliseconds per sample (FASTLM_TEST_SLOW_RANK: a sleep in its forward), as a
slower device would be. Each setting runs in turn; the table reports the median step time over the
second half of the run (once the dynamic shares have settled), the speed-up over uniform shares, and
the shares the dynamic run settled on against the measured per-sample speeds.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from dp_runs import SEQ_LEN, train

from fastlm.bench import print_table


def run(out: Path, steps: int, batch: int, slow_ms: float, extra: list[str]) -> list[dict]:
    sets = [f"train.steps={steps}", f"train.global_batch_size={batch}", "train.micro_batch_size=1",
            "train.eval_every=0", *extra]
    metrics = train(out, sets, {"FASTLM_TEST_SLOW_RANK": f"1:{slow_ms / 1e3}"})
    return [row for row in metrics if "tokens_per_s" in row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow-ms", type=float, default=20.0, help="sleep per sample on rank 1")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16, help="global batch (sequences)")
    parser.add_argument("--static", type=int, nargs=2, default=[3, 1], help="the static dp_shares to compare")
    parser.add_argument("--rebalance-every", type=int, default=4)
    args = parser.parse_args()
    settings = {"uniform": [], f"static {args.static}": [f"parallel.dp_shares={list(args.static)}"],
                "dynamic": ["parallel.dp_shares=\"dynamic\"", f"parallel.rebalance_every={args.rebalance_every}"]}
    tokens = args.batch * SEQ_LEN
    rows, settled = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in settings.items():
            logged = run(Path(tmp) / name.split()[0], args.steps, args.batch, args.slow_ms, extra)
            second_half = logged[len(logged) // 2:]
            step_s = statistics.median(tokens / row["tokens_per_s"] for row in second_half)
            rows.append({"case": name, "step_ms": step_s * 1e3, "tokens_per_s": tokens / step_s})
            if name == "dynamic":
                settled = second_half[-1]["dp_shares"]
    for row in rows:
        row["speedup"] = rows[0]["step_ms"] / row["step_ms"]
    print(f"2 processes, rank 1 slowed by {args.slow_ms:g} ms per sample, global batch {args.batch} x 64 tokens, "
          f"{args.steps} steps; median step time over the second half")
    print_table(rows)
    print(f"dynamic shares settled at {settled}")


if __name__ == "__main__":
    main()
