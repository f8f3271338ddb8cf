"""`fastlm explain RUN_DIR --text "..."`: which input tokens a prediction rests on.

    r = explain_run("runs/tiny", "The class of an object")   # explain.html, explain.png, explain.json

The prediction is the next token of a language-model run (the log-probability of the most likely
next token, or --target), or the class of a classification task run (the log-probability of the
predicted class). Two attributions per input token:

- integrated gradients (Sundararajan et al. 2017) on the input token embeddings: the straight path
  from a baseline (the end-of-text token's embedding at every position, an input that says nothing;
  zero embeddings are degenerate for models that normalize first) to the input, the gradients of all
  interpolation points in batched forwards, the trapezoid rule over `steps` intervals; they sum to
  f(input) - f(baseline) (completeness), up to the quadrature error the result reports;
- attention rollout (Abnar & Zuidema 2020): per layer the head-averaged attention mixed with the
  identity (the residual), 0.5 A + 0.5 I, multiplied through the layers; the explained position's
  row. The fused attention kernels do not return probabilities, so they are recomputed from each
  layer's q and k (captured by hooks on the model's Attention modules) in plain torch.
"""
from __future__ import annotations

import html
import json
import math
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from fastlm.train.errors import FastlmError

# ------------------------------------------------------------------ the model as a function of its embeddings

class Explained:
    """A model, its tokenized input and the scalar it explains: f(ids) -> (B,) log-probabilities of
    `target` at the explained position, for B copies of the same input."""

    def __init__(self, model, ids: list[int], kind: str, labels: list[str] | None = None, pooling: str = "last",
                 baseline_id: int | None = None):
        self.model, self.ids, self.kind, self.labels, self.pooling = model, ids, kind, labels, pooling
        self.baseline_id = baseline_id  # the token whose embedding fills the baseline (None: zero embeddings)
        self.embedding = _token_embedding(model)
        self.target: int | None = None

    def log_probs(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, outputs) log-probabilities of the explained prediction."""
        if self.kind == "lm":
            from fastlm.nn.head import full_logits

            h = self.model.hidden_states(ids)[:, -1]
            return full_logits(self.model.lm_head, h).float().log_softmax(-1)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        return self.model(batch)["logits"].float().log_softmax(-1)

    def f(self, ids: torch.Tensor) -> torch.Tensor:
        return self.log_probs(ids)[:, self.target]

    def position(self) -> int:
        """The input position whose hidden state makes the prediction (rollout's row)."""
        return 0 if self.pooling == "cls" else len(self.ids) - 1

    def label(self, index: int) -> str:
        return self.labels[index] if self.labels else str(index)


def _token_embedding(model) -> torch.nn.Embedding:
    for module in model.modules():
        emb = getattr(module, "tok_emb", None)
        if isinstance(emb, torch.nn.Embedding):
            return emb
    raise FastlmError(f"{type(model).__name__} has no token embedding (tok_emb) to attribute to")


@contextmanager
def _replace_output(module: torch.nn.Module, value: torch.Tensor):
    """module's forward returns `value` instead of its own output (inside the block)."""
    handle = module.register_forward_hook(lambda mod, args, out: value)
    try:
        yield
    finally:
        handle.remove()


# ------------------------------------------------------------------ integrated gradients

def integrated_gradients(ex: Explained, steps: int = 50, batch_size: int = 64) -> dict:
    """Per-token attributions (len(ids),) that sum to about f(x) - f(baseline). The baseline is the
    embedding of ex.baseline_id at every position (zero embeddings when None: a poor baseline for
    models that normalize first, whose output barely changes along the path until it jumps near 0).

    The trapezoid rule on alphas 0, 1/steps, ..., 1: every point's gradient comes from batched
    forwards of batch_size points, the embeddings' output replaced by the interpolated ones."""
    if steps < 1:
        raise FastlmError(f"--steps must be >= 1, got {steps}")
    device = ex.embedding.weight.device
    ids = torch.tensor([ex.ids], device=device)
    with torch.no_grad():
        x = ex.embedding(ids)[0].float()                 # (T, d)
    with torch.no_grad():
        baseline = torch.zeros_like(x) if ex.baseline_id is None else \
            ex.embedding(torch.full_like(ids, ex.baseline_id))[0].float()
    alphas = torch.linspace(0, 1, steps + 1, device=device)
    weights = torch.full_like(alphas, 1.0 / steps)
    weights[0] = weights[-1] = 0.5 / steps              # trapezoid
    grad_sum = torch.zeros_like(x)
    values = torch.empty(steps + 1, device=device)
    dtype = ex.embedding.weight.dtype
    for start in range(0, steps + 1, batch_size):
        a = alphas[start:start + batch_size]
        path = (baseline + a[:, None, None] * (x - baseline)).to(dtype).requires_grad_(True)
        with _replace_output(ex.embedding, path), torch.enable_grad():
            out = ex.f(ids.expand(len(a), -1))
            (grad,) = torch.autograd.grad(out.sum(), path)
        grad_sum += (grad.float() * weights[start:start + batch_size, None, None]).sum(0)
        values[start:start + len(a)] = out.detach().float()
    attributions = ((x - baseline) * grad_sum).sum(-1)   # (T,): the embedding dimensions summed per token
    delta = float(values[-1] - values[0])
    total = float(attributions.sum())
    return {"attributions": attributions.cpu().tolist(), "f_input": float(values[-1]), "f_baseline": float(values[0]),
            "delta": delta, "attribution_sum": total, "completeness_error": abs(total - delta) / max(abs(delta), 1e-12)}


# ------------------------------------------------------------------ attention rollout

def attention_modules(model) -> list:
    from fastlm.nn.attention import Attention

    return [m for m in model.modules() if isinstance(m, Attention)]


def attention_probs(attn, x: torch.Tensor, rope=None) -> torch.Tensor:
    """The attention probabilities (B, H, T, T) of an Attention module on its input x (B, T, d_model),
    recomputed in plain torch from its q and k (the same projections and RoPE as its forward)."""
    from fastlm import ops

    b, t, _ = x.shape
    hd, h, hkv = attn.head_dim, attn.n_head, attn.n_kv_head
    q, k, _ = attn.qkv(x).split([h * hd, hkv * hd, hkv * hd], dim=-1)
    q, k = q.view(b, t, h, hd), k.view(b, t, hkv, hd)
    if rope is not None:
        q, k = ops.rope(q, k, *rope)
    q, k = q.transpose(1, 2).float(), k.transpose(1, 2).float().repeat_interleave(h // hkv, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if attn.causal:
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
    return scores.softmax(-1)


@contextmanager
def capture_attention(model):
    """Inside: a list that fills with each attention layer's probabilities (B, H, T, T), in call order."""
    probs, handles = [], []

    def hook(module, args, kwargs):
        x = args[0]
        rope = args[1] if len(args) > 1 else kwargs.get("rope")
        with torch.no_grad():
            probs.append(attention_probs(module, x, rope))

    for m in attention_modules(model):
        handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield probs
    finally:
        for handle in handles:
            handle.remove()


def attention_rollout(layer_probs: list[torch.Tensor]) -> torch.Tensor:
    """(T, T) rollout of one input's per-layer probabilities [(1, H, T, T), ...]: each row sums to 1."""
    if not layer_probs:
        raise FastlmError("the model has no attention layers to roll out")
    t = layer_probs[0].shape[-1]
    eye = torch.eye(t, device=layer_probs[0].device)
    rollout = eye
    for p in layer_probs:
        a = 0.5 * p[0].mean(0) + 0.5 * eye               # the residual connection
        a = a / a.sum(-1, keepdim=True)
        rollout = a @ rollout
    return rollout


# ------------------------------------------------------------------ a run

def load_explained(run_dir: str | Path, text: str, device) -> Explained:
    """The model of a language-model run or a classification task run, with `text` tokenized as it expects."""
    run_dir = Path(run_dir)
    if (run_dir / "task_info.json").is_file():
        return _classification(run_dir, text, device)
    from fastlm.data.tokenizer import find_eos_id, load_tokenizer
    from fastlm.models import GPT
    from fastlm.train.run import load_run

    config, model, tokenizer_path = load_run(run_dir, device)
    if not isinstance(model, GPT):
        raise FastlmError(f"fastlm explain: model.family = {config.model.family!r} is not supported (GPT and LLaMA "
                          f"language-model runs, and classification task runs are)")
    tokenizer = load_tokenizer(tokenizer_path)
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    _check_length(ids, model.config.max_seq_len)
    return Explained(model.eval(), ids, "lm", baseline_id=find_eos_id(tokenizer))


def _classification(run_dir: Path, text: str, device) -> Explained:
    import tomllib

    from fastlm.data.tokenizer import find_eos_id
    from fastlm.tasks.classification import ClassificationTask
    from fastlm.tasks.loop import load_task_run

    task_section = tomllib.loads((run_dir / "config.toml").read_text()).get("task", {})
    if "label_field" not in task_section:
        raise FastlmError(f"fastlm explain: {run_dir} is a task run but not a classification run")
    task = ClassificationTask()
    tc, model, tok, info = load_task_run(task, run_dir, device)
    if tc.task.model != "transformer":
        raise FastlmError(f"fastlm explain: task.model = {tc.task.model!r} has no token embeddings to attribute to")
    example = task.encode(tc, [{"text": text, "label": info["labels"][0]}], tok, info)[0]
    return Explained(model.eval(), example["ids"], "classification", info["labels"], model.pooling,
                     baseline_id=find_eos_id(tok))


def _check_length(ids: list[int], context: int) -> None:
    if not ids:
        raise FastlmError("--text is empty: nothing to explain")
    if len(ids) > context:
        raise FastlmError(f"--text is {len(ids)} tokens, longer than the model's context of {context} tokens")


def explain(ex: Explained, steps: int = 50, target: int | None = None) -> dict:
    """Integrated gradients and attention rollout of one prediction (ex.target is set to it)."""
    device = ex.embedding.weight.device
    ids = torch.tensor([ex.ids], device=device)
    with torch.no_grad(), capture_attention(ex.model) as probs:
        log_probs = ex.log_probs(ids)[0]
    outputs = log_probs.shape[-1]
    if target is not None and not 0 <= target < outputs:
        raise FastlmError(f"--target {target}: expected 0 .. {outputs - 1}")
    ex.target = int(log_probs.argmax()) if target is None else target
    ig = integrated_gradients(ex, steps)
    rollout = attention_rollout(probs)
    pooled = rollout.mean(0) if ex.pooling == "mean" else rollout[ex.position()]
    return {"kind": ex.kind, "target": ex.target, "log_prob": float(log_probs[ex.target]),
            "integrated_gradients": ig["attributions"], "rollout": pooled.cpu().tolist(),
            "rollout_matrix": rollout.cpu().tolist(),
            **{k: v for k, v in ig.items() if k != "attributions"}}


def explain_run(run_dir: str | Path, text: str, steps: int = 50, target: int | None = None,
                out_dir: str | Path | None = None, device=None) -> dict:
    """Explain the run's prediction on `text`; write explain.html, explain.png and explain.json to
    out_dir (default RUN_DIR/explain). Returns the result with the files' paths."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ex = load_explained(run_dir, text, device)
    r = explain(ex, steps, target)
    tokenizer = _tokenizer_of(run_dir)
    r["tokens"] = [tokenizer.decode([i], skip_special_tokens=False) for i in ex.ids]
    r["prediction_label"] = tokenizer.decode([r["target"]]) if ex.kind == "lm" else ex.label(r["target"])
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "explain"
    out.mkdir(parents=True, exist_ok=True)
    r["html"], r["png"] = str(out / "explain.html"), str(out / "explain.png")
    _write(out / "explain.html", render_html(r, text))
    save_png(r, out / "explain.png")
    _write(out / "explain.json", json.dumps({k: v for k, v in r.items() if k != "rollout_matrix"}, indent=1))
    return r


def _tokenizer_of(run_dir):
    from fastlm.data.tokenizer import load_tokenizer

    return load_tokenizer(Path(run_dir) / "tokenizer.json")


# ------------------------------------------------------------------ output files

def render_html(r: dict, text: str) -> str:
    """A page with the tokens highlighted twice: red/blue by integrated gradients (positive/negative),
    green by attention rollout; each token's value in its tooltip."""
    what = (f"the next token {r['prediction_label']!r}" if r["kind"] == "lm"
            else f"the class {r['prediction_label']!r}")

    def row(values, signed: bool) -> str:
        top = max((abs(v) for v in values), default=0.0) or 1.0
        spans = []
        for token, v in zip(r["tokens"], values):
            a = min(abs(v) / top, 1.0)
            color = (f"rgba(220,40,40,{a:.3f})" if v >= 0 else f"rgba(40,90,220,{a:.3f})") if signed \
                else f"rgba(30,160,60,{a:.3f})"
            spans.append(f'<span style="background:{color}" title="{v:.4g}">{html.escape(token)}</span>')
        return "".join(spans)

    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>fastlm explain</title>\n"
            f"<style>body{{font-family:sans-serif;max-width:60em}} .t{{font-family:monospace;white-space:pre-wrap;"
            f"line-height:1.8;border:1px solid #ccc;padding:.5em}}</style></head><body>\n"
            f"<h1>Why {html.escape(what)}?</h1>\n"
            f"<p>log-probability {r['log_prob']:.4f}. Input: <code>{html.escape(text)}</code></p>\n"
            f"<h2>Integrated gradients</h2><p>red: raises the log-probability, blue: lowers it. Sum "
            f"{r['attribution_sum']:.4f}; f(input) - f(baseline) = {r['delta']:.4f} (relative error "
            f"{r['completeness_error']:.2%}).</p>\n<div class=\"t\">{row(r['integrated_gradients'], True)}</div>\n"
            f"<h2>Attention rollout</h2><p>the share of the predicting position's rolled-out attention on each "
            f"token.</p>\n<div class=\"t\">{row(r['rollout'], False)}</div>\n</body></html>\n")


def save_png(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(r["tokens"])
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.4 * n + 2), 5), sharex=True)
    ig = r["integrated_gradients"]
    axes[0].bar(range(n), ig, color=["tab:red" if v >= 0 else "tab:blue" for v in ig])
    axes[0].set_ylabel("integrated gradients")
    axes[0].axhline(0, color="black", linewidth=0.5)
    axes[1].bar(range(n), r["rollout"], color="tab:green")
    axes[1].set_ylabel("attention rollout")
    axes[1].set_xticks(range(n))
    axes[1].set_xticklabels([repr(t)[1:-1] for t in r["tokens"]], rotation=60, ha="right", fontsize=8)
    fig.suptitle(f"prediction: {r['prediction_label']!r} (log-prob {r['log_prob']:.3f})")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
