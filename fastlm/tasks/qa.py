"""Extractive question answering (SQuAD v1.1 format): a start/end span head over an encoder (or a
decoder), contexts longer than the model split into overlapping windows; metrics exact match, F1.

    [task]
    train = "train.json"        # SQuAD JSON: data[].paragraphs[].{context, qas[].{id, question, answers}}
    validation = "dev.json"     # or "demo:qa" (built from this machine's gettext catalogs)
    stride = 32                 # tokens shared by consecutive windows of a long context
    max_answer_tokens = 30

Each window is [CLS-like end token] question [end token] context-part; data.seq_len is the window
length. A window that does not hold the whole answer is trained to point at position 0 (no
answer here); at evaluation the best span over all windows of a question wins.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastlm.tasks.backbone import d_model, hidden_states, is_encoder
from fastlm.tasks.base import DataFiles, Task
from fastlm.tasks.datasets import DatasetError
from fastlm.tasks.text import pad_batch
from fastlm.train.errors import ConfigError


@dataclass
class QASection(DataFiles):
    stride: int = 32
    max_answer_tokens: int = 30

    def validate(self) -> None:
        if self.stride < 0:
            raise ConfigError(f"task.stride = {self.stride}: expected a number of tokens >= 0")
        if self.max_answer_tokens < 1:
            raise ConfigError(f"task.max_answer_tokens = {self.max_answer_tokens}: expected a positive integer")


def read_squad(path: Path) -> list[dict]:
    """The questions of a SQuAD v1.1 file, each checked: {id, question, context, answers: [(text, start)]}."""
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not a SQuAD JSON file: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DatasetError(f"{path}: expected a JSON object with a \"data\" list (SQuAD format)")
    out = []
    for i, article in enumerate(doc["data"]):
        for j, para in enumerate(_list(article, "paragraphs", f"{path}: data[{i}]")):
            where = f"{path}: data[{i}].paragraphs[{j}]"
            context = para.get("context") if isinstance(para, dict) else None
            if not isinstance(context, str) or not context.strip():
                raise DatasetError(f"{where}: missing or empty \"context\"")
            for k, qa in enumerate(_list(para, "qas", where)):
                qwhere = f"{where}.qas[{k}]"
                if not isinstance(qa, dict) or not isinstance(qa.get("question"), str) or not qa["question"].strip():
                    raise DatasetError(f"{qwhere}: missing or empty \"question\"")
                qwhere += f" (id {qa.get('id')!r})"
                answers = []
                for a, ans in enumerate(_list(qa, "answers", qwhere)):
                    text, start = (ans.get("text"), ans.get("answer_start")) if isinstance(ans, dict) else (None, None)
                    if not isinstance(text, str) or not text or not isinstance(start, int) or isinstance(start, bool):
                        raise DatasetError(f"{qwhere}.answers[{a}]: expected {{\"text\": str, \"answer_start\": int}}")
                    if not 0 <= start <= len(context) - len(text) or context[start:start + len(text)] != text:
                        raise DatasetError(f"{qwhere}.answers[{a}]: the span {start}..{start + len(text)} is outside "
                                           f"its context or does not read {text!r}")
                    answers.append((text, start))
                if not answers:
                    raise DatasetError(f"{qwhere}: no answers (SQuAD v1.1 questions have at least one)")
                out.append({"id": str(qa.get("id", f"{i}-{j}-{k}")), "question": qa["question"],
                            "context": context, "answers": answers})
    if not out:
        raise DatasetError(f"{path}: no questions")
    return out


def _list(obj, key: str, where: str) -> list:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, list):
        raise DatasetError(f"{where}: expected a \"{key}\" list")
    return value


class SpanModel(nn.Module):
    """body -> hidden states -> (start, end) logits over the window; pads can never be chosen."""

    def __init__(self, body: nn.Module):
        super().__init__()
        if not is_encoder(body):
            body.lm_head = None  # unused (and an unused parameter stalls data parallelism)
        self.body = body
        self.span = nn.Linear(d_model(body), 2)
        nn.init.normal_(self.span.weight, 0.0, 0.02)
        nn.init.zeros_(self.span.bias)

    def forward(self, batch: dict) -> dict:
        h = hidden_states(self.body, batch["input_ids"], batch["attention_mask"])
        logits = self.span(h).float().masked_fill(batch["attention_mask"][..., None] == 0, -1e4)
        start, end = logits.unbind(-1)
        out = {"start_logits": start, "end_logits": end}
        if "start_positions" in batch:
            out["loss"] = (F.cross_entropy(start, batch["start_positions"]) +
                           F.cross_entropy(end, batch["end_positions"])) / 2
        return out


class QATask(Task):
    name = "qa"
    Section = QASection

    def read_split(self, tc, path: Path, info) -> list[dict]:
        return read_squad(path)

    def tokenizer_texts(self, records) -> list[str]:
        contexts = list(dict.fromkeys(r["context"] for r in records))
        return contexts + [r["question"] for r in records]

    def encode(self, tc, records, tok, info) -> list[dict]:
        """One example per window of each question's context."""
        from fastlm.data.tokenizer import find_eos_id

        eos, width, stride = find_eos_id(tok), tc.config.data.seq_len, tc.task.stride
        out = []
        for r in records:
            q = tok.encode(r["question"], add_special_tokens=False).ids[:width // 2]
            ctx = tok.encode(r["context"], add_special_tokens=False)
            head = [eos] + q + [eos]
            room = width - len(head)
            if room < 1:
                raise DatasetError(f"question {r['id']!r}: too long for data.seq_len = {width}")
            if stride >= room:
                raise ConfigError(f"task.stride = {stride}: expected fewer than the {room} context tokens "
                                  f"of a window (data.seq_len minus the question)")
            text, a_start = r["answers"][0]
            a_end = a_start + len(text)
            tok_start = next((i for i, (s, e) in enumerate(ctx.offsets) if e > a_start), None)
            tok_end = next((i for i in range(len(ctx.offsets) - 1, -1, -1) if ctx.offsets[i][0] < a_end), None)
            begin = 0
            while True:
                stop = min(begin + room, len(ctx.ids))
                inside = tok_start is not None and tok_end is not None and begin <= tok_start and tok_end < stop
                out.append({"ids": head + ctx.ids[begin:stop], "offset": len(head), "begin": begin,
                            "offsets": ctx.offsets[begin:stop], "id": r["id"], "context": r["context"],
                            "answers": [a for a, _ in r["answers"]],
                            "start": tok_start - begin + len(head) if inside else 0,
                            "end": tok_end - begin + len(head) if inside else 0})
                if stop >= len(ctx.ids):
                    break
                begin += room - stride
        return out

    def build_model(self, tc, body, info) -> nn.Module:
        return SpanModel(body)

    def collate(self, examples) -> dict:
        ids, mask = pad_batch([e["ids"] for e in examples], pad_id=0)
        return {"input_ids": ids, "attention_mask": mask,
                "start_positions": torch.tensor([e["start"] for e in examples]),
                "end_positions": torch.tensor([e["end"] for e in examples])}

    @torch.no_grad()
    def evaluate(self, model, examples, info, device, autocast, batch_size, tc=None):
        from fastlm.eval.metrics import exact_match, squad_f1

        was_training = model.training
        model.eval()
        best: dict[str, tuple[float, str]] = {}
        answers: dict[str, list[str]] = {}
        loss, n = 0.0, 0
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            batch = {k: v.to(device) for k, v in self.collate(chunk).items()}
            with autocast:
                out = model(batch)
            loss, n = loss + out["loss"].item() * len(chunk), n + len(chunk)
            for e, s, t in zip(chunk, out["start_logits"].float().cpu(), out["end_logits"].float().cpu()):
                answers[e["id"]] = e["answers"]
                score, text = _best_span(e, s, t, tc.task.max_answer_tokens)
                if e["id"] not in best or score > best[e["id"]][0]:
                    best[e["id"]] = (score, text)
        model.train(was_training)
        ids = list(best)
        preds = [best[q][1] for q in ids]
        refs = [answers[q] for q in ids]
        result = {"loss": loss / max(n, 1), "exact_match": exact_match(preds, refs), "f1": squad_f1(preds, refs),
                  "questions": len(ids), "windows": len(examples)}
        return result, [{"id": q, "prediction": p, "answers": a} for q, p, a in zip(ids, preds, refs)]


def _best_span(e: dict, start: torch.Tensor, end: torch.Tensor, max_tokens: int, top: int = 10) -> tuple[float, str]:
    """The highest start + end score over context spans of at most max_tokens tokens in this window."""
    lo, hi = e["offset"], len(e["ids"])
    best, text = float("-inf"), ""
    s_top = torch.topk(start[lo:hi], min(top, hi - lo)).indices.tolist()
    e_top = torch.topk(end[lo:hi], min(top, hi - lo)).indices.tolist()
    for s in s_top:
        for t in e_top:
            if s <= t < s + max_tokens:
                score = float(start[lo + s] + end[lo + t])
                if score > best:
                    best = score
                    text = e["context"][e["offsets"][s][0]:e["offsets"][t][1]].strip()
    return best, text
