"""LoRA training cost: trainable parameters, peak memory and tokens/s of fastlm LoRA (fp32 base and int8
base) against full fine-tuning, and against Hugging Face PEFT on the same model, same run.

    OMP_NUM_THREADS=1 python benchmarks/lora.py                    # CPU, a ~30M-parameter LLaMA-style model
    python benchmarks/lora.py --device cuda --d-model 2048 --n-layer 16 --seq-len 1024 --batch 8

Every arm runs in its own process (peak memory on CPU: the peak resident set during training, VmHWM reset once
the model is ready, and that peak minus the ready model's resident set, i.e. what training adds: gradients,
optimizer state, activations; on CUDA torch.cuda.max_memory_allocated, weights included) on the same weights
(seed 0), tokens and optimizer (AdamW over the trainable parameters): a training step is forward,
backward and optimizer step.
    full         fastlm GPT, every parameter trained
    lora         fastlm LoRA (rank, alpha = 2 rank, targets attn + mlp), frozen fp32 base
    lora-int8    the same over an int8 (W8A16) frozen base
    peft         transformers LlamaForCausalLM (fastlm.models.to_hf of the same model) + PEFT LoRA on the same
                 linears (q, k, v, o, gate, up, down), same rank and alpha
Prints a table and writes OUT/results.json.

Measured (2-core shared CPU, OMP_NUM_THREADS=1, defaults with --steps 4: d_model 512, 8 layers, vocab 8192,
batch 4 x 256, rank 8; tokens/s varies by +-40% between runs on this shared machine, the memory figures by a
few MB):
    arm          trainable  peak MB  process MB  tokens/s   vs full
    full        35,660,288      797        1304       229
    lora           557,056      490         999       269   0.62x memory, 1.18x tokens/s
    lora-int8      557,056      620        1051       311   0.78x memory, 1.36x tokens/s
    peft           655,360     1134        1738       259   1.42x memory, 1.13x tokens/s
(two earlier runs: lora 1.21x / 1.63x tokens/s, lora-int8 0.80x / 1.74x, peft 0.70x / 1.63x.) PEFT trains
more parameters for the same rank because q/k/v and gate/up get an A each (fastlm's fused qkv and gate|up
linears share one A, the same function class as one A per fused linear). On CPU the int8 base shows no
resident-set saving: the float model it is quantized from was resident first (freed memory stays with the
process) and the W8A16 backward dequantizes each weight for grad_x; measure it on CUDA
(torch.cuda.max_memory_allocated after the warm-up step).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
ARMS = ("full", "lora", "lora-int8", "peft")


def build(args):
    import torch

    from fastlm.models import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(family="llama", vocab_size=args.vocab, n_layer=args.n_layer, n_head=args.n_head,
                         d_model=args.d_model, max_seq_len=args.seq_len, dropout=0.0))


def run_arm(args) -> dict:
    import torch

    device = torch.device(args.device)
    model = build(args)
    if args.arm in ("lora", "lora-int8"):
        from fastlm.nn.lora import apply_lora

        apply_lora(model, args.rank, 2.0 * args.rank, base="int8" if args.arm == "lora-int8" else "float")
    if args.arm == "peft":
        import peft

        from fastlm.models import to_hf

        model = to_hf(model)
        config = peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"])
        model = peft.get_peft_model(model, config)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=g).to(device)

    def step():
        if args.arm == "peft":
            loss = model(input_ids=ids, labels=ids).loss
        else:
            _, loss = model(ids, labels=ids, return_logits=False)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    ready_mb = _rss_mb()
    _reset_peak_rss()  # the peak below is that of training, not of building the model (int8: from a float one)
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    float(loss)
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak = total_peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        total_peak = _rss_mb("VmHWM:")
        peak = total_peak - ready_mb
    return {"trainable": trainable, "params": total, "tokens_per_s": args.steps * ids.numel() / seconds,
            "peak_mb": peak, "total_peak_mb": total_peak, "ready_mb": ready_mb, "loss": float(loss)}


def _rss_mb(field: str = "VmRSS:") -> float:
    """The current resident set (Linux; VmHWM: its peak since the last reset), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current resident set
        f.write("5")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--n-layer", type=int, default=8)
    p.add_argument("--n-head", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # a child process: one arm
    p.add_argument("--out", default="runs/bench-lora")
    args = p.parse_args(argv)
    if args.arm is not None:
        print(json.dumps(run_arm(args)))
        return 0
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
    results = {}
    for arm in args.arms:
        out = subprocess.run([sys.executable, __file__, *forwarded, "--arm", arm], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            return 1
        results[arm] = json.loads(out.stdout.strip().splitlines()[-1])
    full = results.get("full")
    print(f"LLaMA-style d_model {args.d_model}, {args.n_layer} layers, vocab {args.vocab}, batch {args.batch} x "
          f"{args.seq_len}, rank {args.rank}, {args.device}")
    print(f"{'arm':10s} {'trainable':>12s} {'peak MB':>9s} {'process MB':>10s} {'tokens/s':>9s} {'vs full':>16s}")
    for arm in args.arms:
        r = results[arm]
        ratio = (f"{r['peak_mb'] / full['peak_mb']:.2f}x mem "
                 f"{r['tokens_per_s'] / full['tokens_per_s']:.2f}x tok/s") if full and arm != "full" else ""
        print(f"{arm:10s} {r['trainable']:12,d} {r['peak_mb']:9.0f} {r['total_peak_mb']:10.0f} {r['tokens_per_s']:9.0f} {ratio:>16s}")
    if args.device == "cpu":
        print("(peak MB: what training adds to the resident set of the ready model; process MB: the process's "
              "peak resident set during training, weights, imports and all)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
