"""A Hugging Face LLaMA patched by fastlm.integrations.huggingface.apply_fastlm against the same
model unpatched (HF's default SDPA attention, eager RMSNorm/RoPE/SwiGLU, logits + loss): training
throughput (tokens/s of forward + backward + AdamW step) and peak memory of one training step.

Both models have the same random weights (no download) and see the same batches. Peak memory is
measured in a fresh child process per model: on CPU the growth of the peak resident set (VmHWM,
reset through /proc/self/clear_refs) over the resident set after the model and optimizer state
exist (a warm-up step first); on CUDA the growth of torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import torch

from fastlm.bench.registry import Options, Suite
from fastlm.bench.timing import compare, time_callable

# (name, LlamaConfig kwargs, batch, seq)
SIZES = {
    "llama-tiny": (dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2), 4, 256),
    "llama-small": (dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=4), 4, 512),
    "llama-1b-ish": (dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=4, num_attention_heads=16,
                          num_key_value_heads=8), 8, 1024),
}
VOCAB = 32000


def build(size: str, device: str, dtype: torch.dtype, patched: bool, seed: int = 0):
    import transformers

    from fastlm.integrations.huggingface import apply_fastlm

    kwargs, _, seq = SIZES[size]
    config = transformers.LlamaConfig(vocab_size=VOCAB, max_position_embeddings=max(seq, 64), **kwargs)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).to(device=device, dtype=dtype)
    return apply_fastlm(model) if patched else model


def _step(model, opt, ids):
    def run():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return run


def measure_throughput(options: Options, sizes=None, dtype: str | None = None) -> list[dict]:
    from fastlm.integrations.huggingface import apply_fastlm, unapply_fastlm

    device = options.device
    dtype_name = dtype or ("bf16" if device == "cuda" else "fp32")
    dtype_t = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    sizes = sizes or (["llama-tiny"] if options.quick else
                      (["llama-small", "llama-1b-ish"] if device == "cuda" else ["llama-tiny", "llama-small"]))
    sync = device if device == "cuda" else None
    rows = []
    for size in sizes:
        _, batch, seq = SIZES[size]
        ref = build(size, device, dtype_t, patched=False)
        model = apply_fastlm(copy.deepcopy(ref))
        ids = torch.randint(0, VOCAB, (batch, seq), device=device)
        times = {}
        for name, m in (("fastlm", model), ("hf", ref)):
            m.train()
            opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
            times[name] = time_callable(name, _step(m, opt, ids), warmup=1, repeat=options.repeats(5), device=sync)
        unapply_fastlm(model)
        unapply_fastlm()
        tokens = batch * seq
        rows.append({"case": f"{size} train step B={batch} T={seq} {dtype_name}", "tokens": tokens,
                     "fastlm_tok_s": tokens / times["fastlm"].seconds, "hf_tok_s": tokens / times["hf"].seconds,
                     "speedup": compare(times["fastlm"], times["hf"])})
    return rows


_CHILD = """
import json, sys, torch
from fastlm.bench.suites.hf_patched import SIZES, VOCAB, build, _step
size, device, dtype, patched = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
_, batch, seq = SIZES[size]
model = build(size, device, dtype, patched).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
ids = torch.randint(0, VOCAB, (batch, seq), device=device)
step = _step(model, opt, ids)
step()  # optimizer state now exists
def status_kb(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))
if device == "cuda":
    torch.cuda.synchronize(); start = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
open("/proc/self/clear_refs", "w").write("5")
base = status_kb("VmRSS")
step()
if device == "cuda":
    print(json.dumps((torch.cuda.max_memory_allocated() - start) / 2**20))
else:
    print(json.dumps((status_kb("VmHWM") - base) / 1024))
"""


def peak_mb(size: str, device: str, dtype: str, patched: bool) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD, size, device, dtype, "1" if patched else "0"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"hf_patched memory child ({size}) failed: {out.stderr.strip()[-500:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def measure_memory(options: Options, sizes=None, dtype: str | None = None) -> list[dict]:
    device = options.device
    dtype = dtype or ("bf16" if device == "cuda" else "fp32")
    sizes = sizes or (["llama-tiny"] if options.quick or device == "cpu" else ["llama-small"])
    rows = []
    for size in sizes:
        _, batch, seq = SIZES[size]
        ours, hf = peak_mb(size, device, dtype, True), peak_mb(size, device, dtype, False)
        rows.append({"case": f"{size} train step peak memory B={batch} T={seq} {dtype}",
                     "logits_MB": batch * seq * VOCAB * (2 if dtype == "bf16" else 4) / 2**20,
                     "fastlm_MB": ours, "hf_MB": hf, "memory_ratio": ours / hf if hf > 0 else None})
    return rows


def measure(options: Options) -> list[dict]:
    return measure_throughput(options) + measure_memory(options)


SUITE = Suite(name="hf_patched", baseline="the same Hugging Face LLaMA unpatched (SDPA attention, eager ops)",
              run=measure)
