"""Training images/s and memory of fastlm's image models against the same shapes built with transformers.

  captioning   fastlm ImageToText (VisionEncoder + GELU projector + GPT-2 decoder, loss on the caption only)
               vs transformers ViTModel + the same projector (torch.nn) + GPT2LMHeadModel reading the projected
               patches as a prefix through inputs_embeds (labels -100 there); fastlm's model starts from the HF
               models' weights (vision_from_hf, from_hf, the projector copied), so the first losses agree.
  contrastive  fastlm ContrastiveImageText (ViT + BERT-style encoder, chunked InfoNCE) vs transformers
               CLIPModel (ViT + CLIP's causal text tower, return_loss=True) of the same widths and depths;
               the text towers differ (fastlm's is bidirectional with [CLS] pooling), so do the first losses.

One training step (forward, backward, AdamW) per timed step; images/s = batch / median step time. Each run is
its own subprocess (its peak RSS is its own; both models are built in every run, so the runs start alike) and
the implementations alternate within each repeat (the best of --repeats is kept): drift on the shared machine
hits both. fp32 and bf16 autocast, on CPU unless --device cuda.

    python benchmarks/multimodal.py --quick
    python benchmarks/multimodal.py --models captioning --precision fp32 --repeats 3 --threads 1
    python benchmarks/multimodal.py --interleaved --steps 10     # speed only, both in one process, step by step
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from fastlm.bench.suites.train_throughput import _rss_kb

SHAPE = dict(image_size=64, patch_size=8, vision_d=256, vision_layers=4, d_model=256, n_layer=4, n_head=4,
             vocab_size=8192, text_len=32, batch_size=16, embed_dim=128, warmup=2, steps=6)
QUICK = dict(image_size=32, patch_size=4, vision_d=128, vision_layers=2, d_model=128, n_layer=2, n_head=4,
             vocab_size=2048, text_len=16, batch_size=8, embed_dim=64, warmup=2, steps=6)


def _captioning(s: dict):
    """(fastlm ImageToText, HF (vit, projector, gpt2)) with the same weights."""
    import torch
    import transformers

    from fastlm.models import from_hf
    from fastlm.models.hf_vision import vision_config_from_hf, vision_from_hf
    from fastlm.models.multimodal import ImageToText

    torch.manual_seed(0)
    vit = transformers.ViTModel(transformers.ViTConfig(
        image_size=s["image_size"], patch_size=s["patch_size"], hidden_size=s["vision_d"],
        num_hidden_layers=s["vision_layers"], num_attention_heads=s["n_head"], intermediate_size=4 * s["vision_d"],
        layer_norm_eps=1e-6, attn_implementation="sdpa"), add_pooling_layer=False)
    patches = (s["image_size"] // s["patch_size"]) ** 2
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=s["vocab_size"], n_positions=patches + s["text_len"], n_embd=s["d_model"], n_layer=s["n_layer"],
        n_head=s["n_head"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa"))
    projector = torch.nn.Sequential(torch.nn.Linear(s["vision_d"], s["d_model"]), torch.nn.GELU(),
                                    torch.nn.Linear(s["d_model"], s["d_model"]))
    ours = ImageToText(vision_config_from_hf(vit.config), from_hf(gpt2))
    ours.vision.load_state_dict(vision_from_hf(vit).state_dict())
    ours.projector.load_state_dict(projector.state_dict())
    return ours, (vit, projector, gpt2)


def _contrastive(s: dict):
    """(fastlm ContrastiveImageText, HF CLIPModel) of the same shapes (vision towers with the same weights)."""
    import torch
    import transformers

    from fastlm.models.encoder_config import EncoderConfig
    from fastlm.models.hf_vision import vision_config_from_hf, vision_from_hf
    from fastlm.models.multimodal import ContrastiveImageText

    torch.manual_seed(0)
    text = dict(vocab_size=s["vocab_size"], hidden_size=s["d_model"], num_hidden_layers=s["n_layer"],
                num_attention_heads=s["n_head"], intermediate_size=4 * s["d_model"],
                max_position_embeddings=s["text_len"])
    vision = dict(image_size=s["image_size"], patch_size=s["patch_size"], hidden_size=s["vision_d"],
                  num_hidden_layers=s["vision_layers"], num_attention_heads=s["n_head"],
                  intermediate_size=4 * s["vision_d"])
    clip = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                          projection_dim=s["embed_dim"], attn_implementation="sdpa"))
    enc = EncoderConfig(family="bert", vocab_size=s["vocab_size"], n_layer=s["n_layer"], n_head=s["n_head"],
                        d_model=s["d_model"], d_ff=4 * s["d_model"], max_seq_len=s["text_len"])
    ours = ContrastiveImageText(vision_config_from_hf(clip.vision_model.config), enc, embed_dim=s["embed_dim"])
    ours.vision.load_state_dict(vision_from_hf(clip.vision_model).state_dict())
    return ours, clip


def _trainer(spec: dict, impl: str, ours, hf):
    """(model, one_step(pixels, ids) -> loss): forward, backward and an AdamW step of one implementation."""
    import torch

    patches = (spec["image_size"] // spec["patch_size"]) ** 2
    if impl == "fastlm":
        model = ours
        if spec["model"] == "captioning":
            step_loss = lambda px, ids: model(px, ids, ids, return_logits=False)[1]
        else:
            step_loss = lambda px, ids: model(px, ids)
    elif spec["model"] == "captioning":
        vit, projector, gpt2 = hf
        model = torch.nn.ModuleList([vit, projector, gpt2])

        def step_loss(px, ids):
            prefix = projector(vit(pixel_values=px).last_hidden_state[:, 1:])
            embeds = torch.cat([prefix, gpt2.transformer.wte(ids)], dim=1)
            labels = torch.cat([torch.full((ids.shape[0], patches), -100, device=ids.device), ids], dim=1)
            return gpt2(inputs_embeds=embeds, labels=labels).loss
    else:
        model = hf
        step_loss = lambda px, ids: model(input_ids=ids, pixel_values=px, return_loss=True).loss
    device = torch.device(spec["device"])
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    bf16 = spec["precision"] == "bf16"

    def one_step(px, ids) -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = step_loss(px, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()  # also synchronizes the device
    return model, one_step


def _batches(spec: dict, n: int):
    import torch

    g = torch.Generator().manual_seed(1234)
    b, size = spec["batch_size"], spec["image_size"]
    return [(torch.randn(b, 3, size, size, generator=g).to(spec["device"]),
             torch.randint(0, spec["vocab_size"], (b, spec["text_len"]), generator=g).to(spec["device"]))
            for _ in range(n)]


def run_one(spec: dict) -> dict:
    """One implementation's training run (in a subprocess of its own: its memory is its own)."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    ours, hf = (_captioning if spec["model"] == "captioning" else _contrastive)(spec)
    if spec["impl"] == "fastlm":
        del hf
    else:
        del ours
    model, one_step = _trainer(spec, spec["impl"], ours if spec["impl"] == "fastlm" else None,
                               hf if spec["impl"] == "hf" else None)
    b, device = spec["batch_size"], torch.device(spec["device"])
    batches = _batches(spec, spec["warmup"] + spec["steps"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_kb()
    losses, times = [], []
    for px, ids in batches:
        t0 = time.perf_counter()
        losses.append(one_step(px, ids))
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[spec["warmup"]:])
    result = dict(images_per_s=b / step_s, step_s=step_s, first_loss=losses[0], last_loss=losses[-1],
                  params=sum(p.numel() for p in model.parameters()))
    if device.type == "cuda":
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result["train_mem_mb"] = (peak_kb - rss_before) / 1024
    return result


def run_interleaved(spec: dict) -> dict:
    """Both implementations in one process, one step of each in turn on the same batches: the least noisy speed
    figure on a shared machine (no memory figure: both models are resident). images/s from the fastest step."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    ours, hf = (_captioning if spec["model"] == "captioning" else _contrastive)(spec)
    steps = {impl: _trainer(spec, impl, ours, hf)[1] for impl in ("fastlm", "hf")}
    times: dict[str, list[float]] = {"fastlm": [], "hf": []}
    for i, (px, ids) in enumerate(_batches(spec, spec["warmup"] + spec["steps"])):
        for impl, one_step in steps.items():
            t0 = time.perf_counter()
            one_step(px, ids)
            if i >= spec["warmup"]:
                times[impl].append(time.perf_counter() - t0)
    return {impl: dict(images_per_s=spec["batch_size"] / min(t), median_images_per_s=spec["batch_size"] /
                       statistics.median(t)) for impl, t in times.items()}


def spawn(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=dict(os.environ))
    if proc.returncode != 0:
        raise RuntimeError(f"run {spec['impl']}/{spec['model']}/{spec['precision']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="small shapes, few steps")
    p.add_argument("--models", default="captioning,contrastive", help="comma list of captioning, contrastive")
    p.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16 (autocast)")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs per implementation; the best is kept")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every run (0: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--interleaved", action="store_true", help="both implementations in one process, a step of each "
                   "in turn (speed only; the least noisy on a shared machine)")
    for key, value in SHAPE.items():
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None, help=f"default {value} ({QUICK[key]} "
                       f"with --quick)")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_one(json.loads(args.worker))))
        return
    shape = {k: getattr(args, k) if getattr(args, k) is not None else (QUICK if args.quick else SHAPE)[k]
             for k in SHAPE}
    if shape["image_size"] % shape["patch_size"]:
        raise SystemExit(f"--image-size {shape['image_size']}: expected a multiple of --patch-size")
    print("shape: " + " ".join(f"{k}={v}" for k, v in shape.items()) + f" threads={args.threads or 'default'} "
          f"device={args.device}", flush=True)
    rows = []
    for model in [m for m in args.models.split(",") if m]:
        if model not in ("captioning", "contrastive"):
            raise SystemExit(f"--models: unknown model {model!r} (expected captioning, contrastive)")
        for precision in [p for p in args.precision.split(",") if p]:
            if args.interleaved:
                r = run_interleaved(dict(shape, model=model, precision=precision, threads=args.threads,
                                         device=args.device))
                rows.append(dict(model=model, precision=precision, **r))
                o, h = r["fastlm"], r["hf"]
                print(f"{model:11} {precision:5} | fastlm {o['images_per_s']:7.1f} img/s (median "
                      f"{o['median_images_per_s']:.1f}) | HF {h['images_per_s']:7.1f} (median "
                      f"{h['median_images_per_s']:.1f}) | ratio {o['images_per_s'] / h['images_per_s']:.2f} "
                      f"(median {o['median_images_per_s'] / h['median_images_per_s']:.2f})", flush=True)
                continue
            best: dict[str, dict] = {}
            every: dict[str, list[float]] = {"fastlm": [], "hf": []}
            for _ in range(args.repeats):
                for impl in ("fastlm", "hf"):
                    r = spawn(dict(shape, model=model, precision=precision, impl=impl, threads=args.threads,
                                   device=args.device))
                    every[impl].append(r["images_per_s"])
                    if impl not in best or r["images_per_s"] > best[impl]["images_per_s"]:
                        best[impl] = r
            rows.append(dict(model=model, precision=precision, every_images_per_s=every, **best))
            print(f"  done {model}/{precision}", file=sys.stderr, flush=True)
    if args.interleaved:
        print("ratio = fastlm / HF images/s (fastest step; median in brackets), steps alternating in one process")
    else:
        print_table(rows, "peak_mem_mb" if args.device != "cpu" else "train_mem_mb", args.repeats)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(shape=shape, rows=rows), f, indent=2)


def print_table(rows: list[dict], mem: str, repeats: int) -> None:
    hdr = (f"{'model':11} {'prec':5} | {'fastlm img/s':>12} {'HF img/s':>9} {'ratio':>6} | {'fastlm MB':>9} "
           f"{'HF MB':>7} {'ratio':>6} | {'first loss fastlm/HF':>20} | img/s of every run (fastlm / HF)")
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        o, h = r["fastlm"], r["hf"]
        print(f"{r['model']:11} {r['precision']:5} | {o['images_per_s']:12.1f} {h['images_per_s']:9.1f} "
              f"{o['images_per_s'] / h['images_per_s']:6.2f} | {o[mem]:9.0f} {h[mem]:7.0f} "
              f"{o[mem] / max(h[mem], 1e-9):6.2f} | {o['first_loss']:9.4f}/{h['first_loss']:.4f} | "
              f"runs {' '.join(f'{v:.1f}' for v in r['every_images_per_s']['fastlm'])} / "
              f"{' '.join(f'{v:.1f}' for v in r['every_images_per_s']['hf'])}")
    print(f"ratio = fastlm / HF (img/s: higher is better; MB = {mem}, training memory: lower is better); "
          f"best of {repeats} alternating runs each")


if __name__ == "__main__":
    main()
