"""DP-SGD step time and peak memory: fastlm's DP-SGD vs non-private fastlm vs Opacus ghost clipping.

    python benchmarks/dp_sgd.py                       # the default shape and a wider one, 1 thread
    python benchmarks/dp_sgd.py --quick               # small shapes (about a minute)
    python benchmarks/dp_sgd.py --d-model 512 --batch-size 16 --seq-len 256

Every run is its own subprocess (fastlm.bench.suites.dp_sgd): the same LLaMA-style model, batch and
AdamW; fastlm_dp is fastlm.privacy.make_private, opacus_ghost Opacus' PrivacyEngine with
grad_sample_mode="ghost" on the same model built from torch layers. Targets (the issue): fastlm_dp
<= 1.25x the non-private step time and <= 1.1x its memory, and ahead of Opacus on both.
"""
from __future__ import annotations

import argparse
import json

from fastlm.bench.suites.dp_sgd import IMPLS, QUICK_SHAPE, SHAPE, measure_shape, rows_of


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--d-model", type=int, action="append", help="model widths to measure (repeatable)")
    p.add_argument("--n-layer", type=int, default=SHAPE["n_layer"])
    p.add_argument("--seq-len", type=int, default=SHAPE["seq_len"])
    p.add_argument("--batch-size", type=int, default=SHAPE["batch_size"])
    p.add_argument("--vocab-size", type=int, default=SHAPE["vocab_size"])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2, help="runs per implementation; the fastest is kept")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--task", default="lm,classify", help="comma list: lm (pretraining, the fused LM head), classify "
                   "(fine-tuning: a 2-way classifier on the last token, as in Opacus' BERT fine-tuning figures)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    shapes = [QUICK_SHAPE] if args.quick else [
        dict(SHAPE, d_model=d, n_head=max(4, d // 32), n_kv_head=max(2, d // 64), n_layer=args.n_layer,
             seq_len=args.seq_len, batch_size=args.batch_size, vocab_size=args.vocab_size)
        for d in (args.d_model or [256, 512])]
    shapes = [dict(shape, task=task) for task in args.task.split(",") for shape in shapes]
    rows = []
    for shape in shapes:
        case = "{task} d{d_model} L{n_layer} T{seq_len} B{batch_size} V{vocab_size}".format(**shape)
        best = measure_shape(shape, args.device, warmup=2, steps=2 if args.quick else args.steps,
                             repeats=1 if args.quick else args.repeats, threads=args.threads,
                             impls=args.impls.split(","))
        rows += rows_of(best, args.device, case)
    mem = "peak MB" if args.device == "cuda" else "train MB (RSS growth)"
    print(f"{'case':40s} {'comparison':38s} {'time x':>8s} {'memory x':>9s}   (device {args.device}, "
          f"{args.threads} thread(s); memory: {mem})")
    for r in rows:
        if "time_ratio" in r:
            print(f"{r['case']:40s} {r['comparison']:38s} {r['time_ratio']:8.3f} {r['memory_ratio']:9.3f}")
        else:
            m = r.get("peak_mem_mb", r.get("train_mem_mb"))
            print(f"{r['case']:40s} {r['comparison']:38s} {r['step_s'] * 1000:7.1f}ms {m:8.1f}MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
