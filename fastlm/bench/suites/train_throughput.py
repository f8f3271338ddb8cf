"""Training throughput and memory: fastlm's GPT against the same model in Hugging Face transformers
and in plain PyTorch (fastlm's reference ops), same shape, weights, batches and AdamW (the trainer's:
fastlm.optim.AdamW on the CPU, torch's fused on CUDA; spec "optimizer": "torch" for torch.optim.AdamW).

Each run is its own subprocess (`python -m fastlm.bench.suites.train_throughput --worker SPEC`),
so its peak memory is its own and an environment switch (FASTLM_BACKEND=reference, the CPU GEMM
path, ONEDNN_MAX_CPU_ISA) applies to it alone. Implementations:
  fastlm        fastlm's GPT with its kernels
  fastlm_compiled  the same with every block compiled (fastlm.parallel.apply_compile; `[train] compile`)
  torch_linear  the same model with its linears turned back into torch.nn.Linear
  reference     the same model on the plain-PyTorch reference of every op (FASTLM_BACKEND=reference)
  hf            the model converted with fastlm.models.to_hf (HF's SDPA attention)
  nanogpt       family "gpt2" only: the same weights in nanoGPT's model and optimizer setup
                (fastlm.bench.nanogpt; benchmarks/nanogpt_compare.py), eager
  nanogpt_compiled  the same under torch.compile (nanoGPT's train.py default)
nanoGPT's rows step nanoGPT's own AdamW setup (spec "optimizer" overrides it too).
Each row also gives fastlm's model FLOPs utilisation, `mfu`, against `peak_gflops`: torch's best
GEMM throughput on the model's own GEMM shapes in the row's dtype (fp32 or bf16), measured in the same
worker process right after its training steps (fastlm.bench.roofline: FLOPs per token are PaLM's
6N + 12 L H Q T). On CUDA `mfu_datasheet` is the same against the GPU's dense bf16 datasheet peak.
Where a CPU step's time goes, by op, fp32 against bf16: benchmarks/train_profile.py (its docstring
holds the breakdown for issue 21's 6-layer, width-384 LLaMA).
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from fastlm.bench.registry import Options, Suite

IMPLS = ("fastlm", "fastlm_compiled", "torch_linear", "reference", "hf", "nanogpt", "nanogpt_compiled")
# Dense bf16 tensor-core peaks (FLOP/s) for MFU, by a substring of torch.cuda.get_device_name().
GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}
CPU_SHAPES = {"gpt2": dict(family="gpt2", d_model=256, n_layer=4, n_head=8, vocab_size=4096, seq_len=256, batch_size=8),
              "llama": dict(family="llama", d_model=256, n_layer=4, n_head=8, n_kv_head=4, vocab_size=4096,
                            seq_len=256, batch_size=8)}
QUICK_CPU = dict(d_model=128, n_layer=2, n_head=4, vocab_size=2048, seq_len=128, batch_size=4)
# The presets' shapes (fastlm/configs) with a modest batch, so a GPU check stays within minutes.
GPU_SHAPES = {"gpt2-small": dict(family="gpt2", d_model=768, n_layer=12, n_head=12, vocab_size=50304, seq_len=1024,
                                 batch_size=8),
              "llama-1b": dict(family="llama", d_model=2048, n_layer=16, n_head=32, n_kv_head=8, vocab_size=32000,
                               seq_len=1024, batch_size=4)}


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _optimizer(model, name: str, device):
    """AdamW for every implementation alike: "trainer" is the one `fastlm train` uses ([train] optimizer =
    "adamw": fastlm.optim.AdamW on the CPU, torch's fused one on CUDA), "torch" torch.optim.AdamW's default,
    "nanogpt" nanoGPT's setup (fastlm.bench.nanogpt.configure_optimizer)."""
    import torch

    if name not in ("trainer", "torch", "nanogpt"):
        raise ValueError(f"train_throughput: optimizer must be 'trainer', 'torch' or 'nanogpt', got {name!r}")
    if name == "nanogpt":
        from fastlm.bench import nanogpt

        return nanogpt.configure_optimizer(model, lr=1e-4, weight_decay=0.1, device_type=device.type)
    params = list(model.parameters())
    if name == "trainer" and device.type == "cpu":
        from fastlm.optim import AdamW

        return AdamW(params, lr=1e-4, weight_decay=0.1)
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, fused=name == "trainer" or None)


def _as_impl(impl: str, model, cfg):
    """The fastlm GPT `model` turned into implementation `impl` (same weights), and its loss of a batch."""
    import torch

    if impl == "torch_linear":
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.__class__ = torch.nn.Linear
    if impl == "fastlm_compiled":  # compiled in the warm-up steps, which are not timed
        from fastlm.parallel import apply_compile

        apply_compile(model)
    if impl == "hf":
        from fastlm.models import to_hf

        hf = to_hf(model, attn_implementation="sdpa")
        return hf, lambda x: hf(input_ids=x, labels=x).loss
    if impl.startswith("nanogpt"):
        from fastlm.bench import nanogpt

        baseline = nanogpt.from_fastlm(model, cfg)
        step = torch.compile(baseline) if impl == "nanogpt_compiled" else baseline
        return baseline, lambda x: step(x, labels=x)[1]
    return model, lambda x: model(x, labels=x, return_logits=False)[1]


def run_one(spec: dict) -> dict:
    """One training run in this process; returns tokens/s, memory, and MFU on CUDA."""
    import torch

    from fastlm._malloc import tune_malloc
    from fastlm.bench import roofline
    from fastlm.models import GPT, GPTConfig

    tune_malloc()  # every impl alike, as the trainer does on the CPU (FASTLM_MALLOC_TUNE=0 to compare without)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec.get("device", "cpu"))
    cfg = GPTConfig(family=spec["family"], vocab_size=spec["vocab_size"], n_layer=spec["n_layer"],
                    n_head=spec["n_head"], n_kv_head=spec.get("n_kv_head") if spec["family"] == "llama" else None,
                    d_model=spec["d_model"], max_seq_len=spec["seq_len"], activation=spec.get("activation")).resolved()
    torch.manual_seed(0)
    model = GPT(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    flops_per_token = roofline.model_flops_per_token(model, cfg, spec["seq_len"])
    shapes = roofline.gemm_shapes(model, spec["batch_size"] * spec["seq_len"])
    model, step_loss = _as_impl(spec["impl"], model, cfg)
    model.to(device).train()
    default_optimizer = "nanogpt" if spec["impl"].startswith("nanogpt") else "trainer"
    opt = _optimizer(model, spec.get("optimizer") or default_optimizer, device)
    g = torch.Generator().manual_seed(1234)
    batches = [torch.randint(0, spec["vocab_size"], (spec["batch_size"], spec["seq_len"]), generator=g).to(device)
               for _ in range(spec["warmup"] + spec["steps"])]
    bf16 = spec["precision"] == "bf16"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_kb()
    losses, times = [], []
    for x in batches:
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = step_loss(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())  # also synchronizes the device
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[spec["warmup"]:])  # robust to other jobs stealing the CPU
    tokens_per_s = spec["batch_size"] * spec["seq_len"] / step_s
    result = dict(tokens_per_s=tokens_per_s, step_s=step_s, first_loss=losses[0], last_loss=losses[-1],
                  params=n_params, flops_per_token=flops_per_token)
    if device.type == "cuda":
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        name = torch.cuda.get_device_name()
        datasheet = next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)
        if datasheet:
            result["mfu_datasheet"] = tokens_per_s * flops_per_token / datasheet
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result.update(peak_rss_mb=peak_kb / 1024, train_mem_mb=(peak_kb - rss_before) / 1024)
        if bf16:  # fastlm's 16-bit CPU GEMM path: by CPU feature, else a timing at first use, or forced
            from fastlm.ops.matmul import cpu_gemm16_choice, cpu_gemm16_is_native

            result["cpu_gemm16_native"] = cpu_gemm16_is_native(torch.bfloat16)
            result["cpu_gemm16"] = cpu_gemm16_choice(torch.bfloat16)
    if spec.get("roofline", True):  # after the timed steps (and the memory readings), in the same process
        dtype = torch.bfloat16 if bf16 else torch.float32
        peak, best_shape = roofline.peak_gflops(shapes, dtype, device)
        result.update(peak_gflops=peak, peak_shape=list(best_shape),
                      mfu=tokens_per_s * flops_per_token / (peak * 1e9))
    return result


def spawn(spec: dict) -> dict:
    env = dict(os.environ)
    if spec["impl"] == "reference":
        env["FASTLM_BACKEND"] = "reference"
    if spec.get("gemm16"):
        env["FASTLM_CPU_GEMM16"] = spec["gemm16"]
    if spec.get("no_native_bf16"):
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    proc = subprocess.run([sys.executable, "-m", "fastlm.bench.suites.train_throughput", "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"training run {spec['impl']}/{spec['family']}/{spec['precision']} failed:\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_runs(shape: dict, precision: str, impls, base: dict, repeats: int = 1) -> dict[str, dict]:
    """The best of `repeats` runs per implementation, alternating so machine drift hits all alike."""
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for impl in impls:
            r = spawn(dict(base, **shape, precision=precision, impl=impl))
            if impl not in best or r["tokens_per_s"] > best[impl]["tokens_per_s"]:
                best[impl] = r
    return best


def measure(options: Options) -> list[dict]:
    cuda = options.device == "cuda"
    shapes = dict(GPU_SHAPES) if cuda else {k: dict(v, **(QUICK_CPU if options.quick else {}))
                                           for k, v in CPU_SHAPES.items()}
    precisions = ["bf16"] if cuda else ["fp32", "bf16"]
    base = dict(device=options.device, warmup=2 if options.quick else 3, steps=options.repeats(8 if cuda else 10))
    rows = []
    for name, shape in shapes.items():
        for precision in precisions:
            runs = compare_runs(shape, precision, ("fastlm", "reference", "hf"), base)
            ours = runs["fastlm"]
            row = {"case": f"{name} {precision}", "model": name, "precision": precision,
                   "fastlm_tok_s": ours["tokens_per_s"], "hf_tok_s": runs["hf"]["tokens_per_s"],
                   "plain_torch_tok_s": runs["reference"]["tokens_per_s"],
                   "speedup": ours["tokens_per_s"] / runs["hf"]["tokens_per_s"],
                   "vs_plain_torch": ours["tokens_per_s"] / runs["reference"]["tokens_per_s"]}
            row.update(mfu=ours["mfu"], peak_gflops=ours["peak_gflops"],
                       model_gflops=ours["tokens_per_s"] * ours["flops_per_token"] / 1e9)
            for key in ("mfu_datasheet", "peak_mem_mb", "train_mem_mb"):
                if key in ours:
                    row[f"fastlm_{key}"] = ours[key]
                    row[f"hf_{key}"] = runs["hf"].get(key)
            rows.append(row)
    if not cuda:  # 16-bit training on CPU: bf16 / fp32 tokens/s of fastlm (the target is >= 1/1.5)
        by = {(r["model"], r["precision"]): r for r in rows}
        for name in shapes:
            by[(name, "bf16")]["bf16_vs_fp32"] = by[(name, "bf16")]["fastlm_tok_s"] / by[(name, "fp32")]["fastlm_tok_s"]
    return rows


SUITE = Suite(name="train_throughput", baseline="Hugging Face transformers (same model, SDPA attention)", run=measure)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(run_one(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m fastlm.bench.suites.train_throughput --worker SPEC (use `fastlm bench` instead)")
