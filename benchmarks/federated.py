"""Federated training: rounds and wall time to a target validation perplexity, IID vs Dirichlet(0.1) clients,
FedAvg vs FedProx; and what secure aggregation costs (bytes sent and round time), all in the same run.

    python benchmarks/federated.py                   # 10 clients, 5 per round, 2 local steps, 1 thread
    python benchmarks/federated.py --quick           # fewer rounds (a couple of minutes)
    python benchmarks/federated.py --rounds 60 --target-ppl 300 --json out.json

Every case is `fastlm train tiny` (a smaller LLaMA-style model on the embedded corpus) with a [federated]
section, through fastlm.train.Trainer; the validation perplexity of the global model is measured after
every round. Secure aggregation (Bonawitz et al.) is the IID FedAvg case again with
federated.secure_aggregation = true; its bytes are every message of the protocol (keys, secret shares,
masked vectors) against the updates sent in the clear as fp32 (Bonawitz et al. report ~1.7-2x).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from fastlm.train import Trainer, load_config  # noqa: E402
from fastlm.train.metrics import read_metrics  # noqa: E402

MODEL = ["model.n_layer=2", "model.n_head=4", "model.n_kv_head=2", "model.d_model=64", "data.seq_len=64",
         "train.global_batch_size=8", "train.micro_batch_size=8", "train.lr=3e-3", "train.warmup_steps=10",
         "train.min_lr=3e-4", "train.eval_batches=8", "train.precision=fp32", "train.grad_clip=1.0"]
CASES = {
    "iid fedavg": ["federated.partition=\"iid\"", "federated.algorithm=\"fedavg\""],
    "iid fedprox": ["federated.partition=\"iid\"", "federated.algorithm=\"fedprox\""],
    "dirichlet(0.1) fedavg": ["federated.partition=\"dirichlet\"", "federated.alpha=0.1",
                              "federated.algorithm=\"fedavg\""],
    "dirichlet(0.1) fedprox": ["federated.partition=\"dirichlet\"", "federated.alpha=0.1",
                               "federated.algorithm=\"fedprox\""],
    "iid fedavg + secure aggregation": ["federated.partition=\"iid\"", "federated.algorithm=\"fedavg\"",
                                        "federated.secure_aggregation=true"],
}


def run_case(overrides: list[str], out: str) -> dict:
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer's closing lines
        Trainer(load_config("tiny", overrides), out_dir=out, show_progress=False).fit()
    wall = time.perf_counter() - t0
    lines = read_metrics(out)
    rounds = [r for r in lines if "loss" in r]
    evals = [r for r in lines if "val_ppl" in r]
    return {"wall_s": wall, "evals": [(r["round"], r["val_ppl"]) for r in evals],
            "round_s": sum(r["round_s"] for r in rounds) / len(rounds),
            "bytes_sent": sum(r["bytes_sent"] for r in rounds), "plain_bytes": sum(r["plain_bytes"] for r in rounds),
            "final_ppl": evals[-1]["val_ppl"]}


def rounds_to(evals, target: float):
    return next((r for r, ppl in evals if ppl <= target), None)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--per-round", type=int, default=5)
    p.add_argument("--local-steps", type=int, default=2)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--mu", type=float, default=0.01)
    p.add_argument("--target-ppl", type=float, default=600.0)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    rounds = 10 if args.quick else args.rounds
    fed = [f"federated.clients={args.clients}", f"federated.clients_per_round={args.per_round}",
           f"federated.rounds={rounds}", f"federated.local_steps={args.local_steps}", f"federated.mu={args.mu}",
           "federated.eval_every=1"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(c for c in CASES if c in args.cases.split(",")):
            results[name] = run_case([*MODEL, *fed, *CASES[name]], os.path.join(tmp, f"run{i}"))
            print(f"  {name}: done in {results[name]['wall_s']:.1f}s", flush=True)
    print(f"\n{args.clients} clients, {args.per_round} per round, {args.local_steps} local steps, {rounds} rounds, "
          f"{torch.get_num_threads()} thread(s), target validation perplexity {args.target_ppl:g}")
    print(f"{'case':34s} {'rounds to target':>16s} {'wall s to target':>16s} {'final ppl':>10s} {'s/round':>8s}")
    for name, r in results.items():
        hit = rounds_to(r["evals"], args.target_ppl)
        wall = f"{hit * r['round_s']:.1f}" if hit else "-"
        print(f"{name:34s} {hit if hit else 'not reached':>16} {wall:>16s} {r['final_ppl']:10.1f} {r['round_s']:8.2f}")
        r["rounds_to_target"] = hit
    plain, secure = results.get("iid fedavg"), results.get("iid fedavg + secure aggregation")
    if plain and secure:
        bytes_x = secure["bytes_sent"] / secure["plain_bytes"]
        time_x = secure["round_s"] / plain["round_s"]
        print(f"\nsecure aggregation: {bytes_x:.2f}x the bytes of sending updates in the clear "
              f"({secure['bytes_sent'] / 1e6:.1f} MB vs {secure['plain_bytes'] / 1e6:.1f} MB), "
              f"{time_x:.2f}x the round time ({secure['round_s']:.2f} s vs {plain['round_s']:.2f} s), "
              f"final perplexity {secure['final_ppl']:.1f} vs {plain['final_ppl']:.1f}")
        results["secure_overhead"] = {"bytes_x": bytes_x, "round_time_x": time_x}
    from fastlm.federated.secure_agg import secure_agg_overhead

    print("\nthe protocol alone (one simulated round, against summing the same float32 updates):")
    protocol = []
    for n, numel, dropped in [(10, 1_000_000, 0), (10, 1_000_000, 2), (50, 100_000, 0)]:
        o = secure_agg_overhead(n, numel, dropped=dropped)
        protocol.append({k: v for k, v in o.items() if k != "bytes_by_round"})
        print(f"  {n} clients x {numel:,} values, {dropped} dropped: {o['bytes_ratio']:.2f}x bytes "
              f"({o['bytes_ratio_bit_packed']:.2f}x with 62-bit packing), {o['secure_seconds']:.2f} s vs "
              f"{o['plain_seconds'] * 1e3:.1f} ms plain, max error {o['max_abs_error']:.1e}")
    results["protocol_overhead"] = protocol
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
