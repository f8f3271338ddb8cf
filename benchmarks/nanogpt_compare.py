"""fastlm against nanoGPT: fp32 training tokens/s of the same GPT-2, same weights, same batches, same run.

The model is nanoGPT's own Shakespeare-character configuration widened to a real vocabulary: 6 layers,
6 heads, width 384, context 256 (nanoGPT's config/train_shakespeare_char.py), vocabulary 8192, batch 8,
exact GELU, biases, tied head, no dropout. Runs, each in its own subprocess
(fastlm.bench.suites.train_throughput's worker), alternated round by round, best of --repeats;
ratios are against the faster of the two nanoGPT runs:
  fastlm            fastlm's GPT with fastlm.optim.AdamW, as `fastlm train` runs it on the CPU
  fastlm_torch_adamw the same model stepping torch.optim.AdamW (isolates the optimizer's share)
  nanogpt           fastlm.bench.nanogpt: nanoGPT's modules and optimizer setup, eager (`--compile=False`)
  nanogpt_compiled  the same under torch.compile (nanoGPT's train.py default; compiled in the warm-up)
On the CPU nanoGPT trains in fp32, so that is the precision compared (--precision bf16 is there too).

    python benchmarks/nanogpt_compare.py --threads 1 --repeats 2
    python benchmarks/nanogpt_compare.py --quick
"""
from __future__ import annotations

import argparse

from fastlm.bench.suites.train_throughput import spawn

SHAPE = dict(family="gpt2", activation="gelu", d_model=384, n_layer=6, n_head=6, vocab_size=8192, seq_len=256,
             batch_size=8)
QUICK = dict(SHAPE, d_model=128, n_layer=2, n_head=4, vocab_size=2048, seq_len=128, batch_size=4)
RUNS = {"fastlm": dict(impl="fastlm"),
        "fastlm_torch_adamw": dict(impl="fastlm", optimizer="torch"),
        "nanogpt": dict(impl="nanogpt"),
        "nanogpt_compiled": dict(impl="nanogpt_compiled")}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small model and few steps (a smoke run)")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma list of {', '.join(RUNS)}")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (torch.compile compiles here)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (the median step time is reported)")
    p.add_argument("--repeats", type=int, default=1, help="alternate the runs this many times, keep each one's best")
    args = p.parse_args(argv)
    runs = [r for r in args.runs.split(",") if r]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        p.error(f"unknown run(s) {unknown}; expected some of {list(RUNS)}")
    shape = QUICK if args.quick else SHAPE
    base = dict(device="cpu", threads=args.threads, warmup=2 if args.quick else args.warmup,
                steps=4 if args.quick else args.steps, roofline=False)
    best: dict[str, dict] = {}
    for _ in range(args.repeats):  # alternate so that machine drift hits every run alike
        for name in runs:
            result = spawn(dict(base, **shape, **RUNS[name], precision=args.precision))
            if name not in best or result["tokens_per_s"] > best[name]["tokens_per_s"]:
                best[name] = result
    print(f"{shape['n_layer']} layers, width {shape['d_model']}, context {shape['seq_len']}, vocab "
          f"{shape['vocab_size']}, batch {shape['batch_size']}, {args.precision}, threads {args.threads or 'default'}, "
          f"best of {args.repeats}")
    nano = [best[n] for n in ("nanogpt", "nanogpt_compiled") if n in best]
    baseline = max(nano, key=lambda r: r["tokens_per_s"]) if nano else None  # the faster nanoGPT: the stricter bar
    print(f"{'run':<20} {'tokens/s':>10} {'step ms':>9} {'last loss':>10} {'vs best nanoGPT':>16}")
    for name, r in best.items():
        ratio = f"{r['tokens_per_s'] / baseline['tokens_per_s']:.2f}x" if baseline else "-"
        print(f"{name:<20} {r['tokens_per_s']:>10.0f} {r['step_s'] * 1e3:>9.1f} {r['last_loss']:>10.4f} {ratio:>16}")


if __name__ == "__main__":
    main()
