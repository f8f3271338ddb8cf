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


def run_one(spec: dict) -> dict:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    ours, hf = (_captioning if spec["model"] == "captioning" else _contrastive)(spec)
    patches = (spec["image_size"] // spec["patch_size"]) ** 2
    if spec["impl"] == "fastlm":
        del hf
        model = ours
        if spec["model"] == "captioning":
            step_loss = lambda px, ids: model(px, ids, ids, return_logits=False)[1]
        else:
            step_loss = lambda px, ids: model(px, ids)
    else:
        del ours
        if spec["model"] == "captioning":
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
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    g = torch.Generator().manual_seed(1234)
    n, b = spec["warmup"] + spec["steps"], spec["batch_size"]
    batches = [(torch.randn(b, 3, spec["image_size"], spec["image_size"], generator=g).to(device),
                torch.randint(0, spec["vocab_size"], (b, spec["text_len"]), generator=g).to(device)) for _ in range(n)]
    bf16 = spec["precision"] == "bf16"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_kb()
    losses, times = [], []
    for px, ids in batches:
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = step_loss(px, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())  # also synchronizes the device
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
    mem = "peak_mem_mb" if args.device != "cpu" else "train_mem_mb"
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
          f"best of {args.repeats} alternating runs each")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(shape=shape, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
