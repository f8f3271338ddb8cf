"""DP-SGD step time and peak memory: fastlm's DP-SGD against non-private fastlm and against Opacus.

The same LLaMA-style GPT, batch and AdamW in every run, each in its own subprocess (so a CPU run's
peak RSS is its own):
- fastlm: non-private training (fused head + loss);
- fastlm_dp: fastlm.privacy.make_private (per-sample norms from the layers' inputs and output
  gradients, book-keeping clipped sums in the same backward, noise once per step);
- torch: the same model with torch.nn.Linear / nn.RMSNorm layers and a plain logits + cross-entropy
  head, non-private (Opacus' own baseline);
- opacus_ghost: that torch model under Opacus' PrivacyEngine, grad_sample_mode="ghost" (ghost
  clipping: a second backward with the clipped loss).
Ratios: fastlm_dp / fastlm (targets <= 1.25x time, <= 1.1x memory) and opacus_ghost / fastlm_dp.
Memory: CUDA max_memory_allocated, or on CPU the growth of the peak RSS during the timed steps
(`train_mem_mb`; the interpreter, torch and the model are there before and after) in a second run
of each implementation with MALLOC_MMAP_THRESHOLD_=131072, so that glibc returns every freed large
block and the RSS follows the live tensors (the timed run keeps the default allocator: mmap-backed
allocations make every step slower).
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from fastlm.bench.registry import Options, Suite
from fastlm.bench.suites.train_throughput import _rss_kb

IMPLS = ("fastlm", "fastlm_dp", "torch", "opacus_ghost")
SHAPE = {"d_model": 256, "n_layer": 4, "n_head": 8, "n_kv_head": 4, "vocab_size": 4096, "seq_len": 128,
         "batch_size": 8}
QUICK_SHAPE = {"d_model": 128, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "vocab_size": 2048, "seq_len": 128,
               "batch_size": 8}


def _torch_layers(model) -> None:
    """fastlm.nn.Linear -> torch.nn.Linear and fastlm.nn.RMSNorm -> torch.nn.RMSNorm, same weights."""
    from torch import nn

    from fastlm.nn import Linear, RMSNorm

    for module in model.modules():
        if isinstance(module, Linear):
            module.__class__ = nn.Linear
    for name, module in list(model.named_modules()):
        if isinstance(module, RMSNorm):
            norm = nn.RMSNorm(module.weight.shape[0], eps=module.eps)
            norm.weight = module.weight
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], norm)


def worker(spec: dict) -> dict:
    from fastlm.models import GPT, GPTConfig

    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    device = torch.device(spec.get("device", "cpu"))
    cfg = GPTConfig(family="llama", vocab_size=spec["vocab_size"], n_layer=spec["n_layer"], n_head=spec["n_head"],
                    n_kv_head=spec["n_kv_head"], d_model=spec["d_model"], max_seq_len=spec["seq_len"])
    torch.manual_seed(0)
    model = GPT(cfg)
    classify = spec.get("task") == "classify"  # fine-tuning: a 2-way classifier on the last token
    if classify:
        from fastlm.tasks.classification import SequenceClassifier

        model = SequenceClassifier(model, num_labels=2)
    impl = spec["impl"]
    if impl in ("torch", "opacus_ghost"):
        _torch_layers(model)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    B, T, V = spec["batch_size"], spec["seq_len"], spec["vocab_size"]
    g = torch.Generator().manual_seed(1234)
    batches = [torch.randint(0, V, (B, T), generator=g).to(device) for _ in range(spec["warmup"] + spec["steps"])]
    if classify:
        batches = [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x[:, 0] % 2} for x in batches]
    noise, clip = 1.0, 1.0
    ce = torch.nn.CrossEntropyLoss()
    targets = lambda x: torch.nn.functional.pad(x[:, 1:], (0, 1), value=-100)
    if impl == "fastlm_dp":
        from fastlm.privacy import make_private

        model, opt = make_private(model, opt, noise_multiplier=noise, max_grad_norm=clip, expected_batch_size=B)
    if classify and impl != "opacus_ghost":
        loss_of = lambda b: model(b)["loss"]
    elif impl in ("fastlm", "fastlm_dp"):
        loss_of = lambda x: model(x, labels=x, return_logits=False)[1]
    elif impl == "torch":
        loss_of = lambda x: ce(model(x).flatten(0, 1), targets(x).flatten())
    else:
        from opacus import PrivacyEngine

        ids = torch.cat([b["input_ids"] if classify else b for b in batches])
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids), batch_size=B)
        engine = PrivacyEngine()
        model, opt, ce, _ = engine.make_private(module=model, optimizer=opt, data_loader=loader, criterion=ce,
                                                noise_multiplier=noise, max_grad_norm=clip, grad_sample_mode="ghost",
                                                poisson_sampling=False)

        def loss_of(x):
            if classify:
                return ce(model(x)["logits"], x["labels"])
            logits = model(x)
            return ce(logits.flatten(0, 1), targets(x).flatten(), shape=logits.shape)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_kb()
    times, losses = [], []
    for x in batches:
        t0 = time.perf_counter()
        loss = loss_of(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[spec["warmup"]:])
    out = {"impl": impl, "step_s": step_s, "first_loss": losses[0], "last_loss": losses[-1]}
    if device.type == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out.update(peak_rss_mb=peak / 1024, train_mem_mb=(peak - rss_before) / 1024)
    return out


def spawn(spec: dict, exact_rss: bool = False) -> dict:
    env = dict(os.environ, **({"MALLOC_MMAP_THRESHOLD_": "131072"} if exact_rss else {}))
    proc = subprocess.run([sys.executable, "-m", "fastlm.bench.suites.dp_sgd", "--worker", json.dumps(spec)],
                          check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"dp_sgd run {spec['impl']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_shape(shape: dict, device: str, warmup: int, steps: int, repeats: int, threads: int | None,
                  impls=IMPLS) -> dict[str, dict]:
    """The fastest of `repeats` runs per implementation (alternating, so machine drift hits all alike)."""
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for impl in impls:
            r = spawn(dict(shape, impl=impl, device=device, warmup=warmup, steps=steps, threads=threads))
            if impl not in best or r["step_s"] < best[impl]["step_s"]:
                best[impl] = r
    if device != "cuda":  # the memory of a run whose RSS follows the live tensors (see the module doc)
        for impl in impls:
            r = spawn(dict(shape, impl=impl, device=device, warmup=1, steps=2, threads=threads), exact_rss=True)
            best[impl].update(train_mem_mb=r["train_mem_mb"], peak_rss_mb=r["peak_rss_mb"])
    return best


def rows_of(best: dict[str, dict], device: str, case: str) -> list[dict]:
    """Ratio rows (time_ratio, memory_ratio: the first named over the second; `speedup` where fastlm_dp
    is the candidate) and one absolute row per implementation."""
    mem = "peak_mem_mb" if device == "cuda" else "train_mem_mb"
    base, dp = best["fastlm"], best["fastlm_dp"]
    rows = [{"case": case, "comparison": "fastlm_dp vs fastlm (non-private)", "time_ratio": dp["step_s"] / base["step_s"],
             "memory_ratio": dp[mem] / base[mem], "speedup": base["step_s"] / dp["step_s"]}]
    if "opacus_ghost" in best:
        op = best["opacus_ghost"]
        rows.append({"case": case, "comparison": "opacus_ghost vs fastlm_dp", "time_ratio": op["step_s"] / dp["step_s"],
                     "memory_ratio": op[mem] / dp[mem], "speedup": op["step_s"] / dp["step_s"]})
    if "torch" in best and "opacus_ghost" in best:
        t, op = best["torch"], best["opacus_ghost"]
        rows.append({"case": case, "comparison": "opacus_ghost vs torch (non-private)",
                     "time_ratio": op["step_s"] / t["step_s"], "memory_ratio": op[mem] / t[mem]})
    for impl, r in best.items():
        rows.append({"case": case, "comparison": f"{impl} absolute", "step_s": r["step_s"], mem: r[mem]})
    return rows


def run(options: Options) -> list[dict]:
    shape = QUICK_SHAPE if options.quick else SHAPE
    best = measure_shape(shape, options.device, warmup=2, steps=options.repeats(8), repeats=1 if options.quick else 2,
                         threads=None)
    return rows_of(best, options.device, "lm d{d_model} L{n_layer} T{seq_len} B{batch_size} V{vocab_size}".format(**shape))


SUITE = Suite(name="dp_sgd", baseline="non-private fastlm, and Opacus ghost clipping", run=run)

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
