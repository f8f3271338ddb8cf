"""Prompted text-to-text tasks on a decoder (GPT): the prompt's tokens are masked out of the loss.

    generation   prompt/response pairs; metrics perplexity (of the responses) and ROUGE-1/2/L
    translation  source/target pairs (JSONL, or two aligned text files); greedy or beam search;
                 metrics BLEU and chrF (sacrebleu), and perplexity

    [task]
    train = "demo:en-de"                      # JSONL, or for translation "src.txt|tgt.txt"
    source_field = "source"                   # generation defaults: "prompt" / "response"
    target_field = "target"
    template = "English: {source}\\nGerman:"   # the prompt; {source} is the input text
    beam_size = 1                             # 1: greedy; > 1: beam search
    max_new_tokens = 48
    eval_examples = 100                       # decoded for BLEU/ROUGE (perplexity uses every example)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastlm.models import GPT
from fastlm.tasks.base import DataFiles, Task
from fastlm.tasks.datasets import DatasetError, read_records, text_value
from fastlm.tasks.decoding import beam_search, greedy
from fastlm.tasks.text import encode
from fastlm.train.errors import ConfigError


@dataclass
class PromptedSection(DataFiles):
    source_field: str = "source"
    target_field: str = "target"
    template: str = "{source}\n"
    beam_size: int = 1
    length_penalty: float = 1.0
    max_new_tokens: int = 48
    eval_examples: int = 100

    def validate(self) -> None:
        if "{source}" not in self.template:
            raise ConfigError(f"task.template = {self.template!r}: expected a {{source}} placeholder")
        for key in ("beam_size", "max_new_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"task.{key} = {getattr(self, key)}: expected a positive integer")
        if self.eval_examples < 0:
            raise ConfigError(f"task.eval_examples = {self.eval_examples}: expected >= 0")


@dataclass
class GenerationSection(PromptedSection):
    source_field: str = "prompt"
    target_field: str = "response"


@dataclass
class TranslationSection(PromptedSection):
    template: str = "English: {source}\nGerman:"


class PromptedLM(nn.Module):
    """A GPT trained on prompt + target with the loss on the target tokens only."""

    def __init__(self, body: nn.Module):
        super().__init__()
        if not isinstance(body, GPT):
            raise ConfigError("generation and translation need a decoder (a GPT [model] family: gpt2 or llama)")
        self.body = body

    def forward(self, batch: dict) -> dict:
        logits = self.body(batch["input_ids"]).float()
        # position t predicts token t + 1; -100 (prompt, padding) is not counted
        targets = F.pad(batch["labels"][:, 1:], (0, 1), value=-100)
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
        count = (targets != -100).sum()
        return {"loss": nll / count.clamp_min(1), "nll_sum": nll.detach(), "tokens": count}


class PromptedTask(Task):
    Section = PromptedSection

    def read_split(self, tc, path: Path, info) -> list[dict]:
        t = tc.task
        if "|" in str(path):  # two aligned text files, one segment a line
            return _read_aligned(*str(path).split("|", 1))
        records = read_records(path, (t.source_field, t.target_field))
        return [{"source": text_value(r, t.source_field), "target": text_value(r, t.target_field)} for r in records]

    def tokenizer_texts(self, records) -> list[str]:
        return [r["source"] for r in records] + [r["target"] for r in records]

    def encode(self, tc, records, tok, info) -> list[dict]:
        from fastlm.data.tokenizer import find_eos_id

        self._tokenizer = tok  # to turn decoded ids back into text in evaluate
        eos, width = find_eos_id(tok), tc.config.data.seq_len
        before, _, after = tc.task.template.partition("{source}")
        head, tail = (encode(tok, [x])[0] if x else [] for x in (before, after))
        sources = encode(tok, [r["source"] for r in records])
        targets = encode(tok, [" " + r["target"] for r in records])
        budget = max(1, width // 2 - len(head) - len(tail))  # a prompt takes at most half the context
        out = []
        for r, src, t in zip(records, sources, targets):
            p = head + src[:budget] + tail  # a long source is cut, the template's cue kept
            t = (t + [eos])[:width - len(p)]
            out.append({"prompt": p, "target": t, "source": r["source"], "reference": r["target"], "eos": eos})
        return out

    def build_model(self, tc, body, info) -> nn.Module:
        return PromptedLM(body)

    def collate(self, examples) -> dict:
        width = max(len(e["prompt"]) + len(e["target"]) for e in examples)
        ids = torch.full((len(examples), width), examples[0]["eos"], dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        for i, e in enumerate(examples):
            row = e["prompt"] + e["target"]
            ids[i, :len(row)] = torch.tensor(row)
            labels[i, len(e["prompt"]):len(row)] = torch.tensor(e["target"])
        return {"input_ids": ids, "labels": labels}

    @torch.no_grad()
    def evaluate(self, model, examples, info, device, autocast, batch_size, tc=None):
        was_training = model.training
        model.eval()
        nll, tokens = 0.0, 0
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in self.collate(examples[i:i + batch_size]).items()}
            with autocast:
                out = model(batch)
            nll, tokens = nll + out["nll_sum"].item(), tokens + int(out["tokens"])
        t = tc.task
        decoded = examples[:t.eval_examples]
        hyps = [self.decode(model.body, e, t) for e in decoded]
        model.train(was_training)
        result = {"loss": nll / max(tokens, 1), "perplexity": math.exp(min(nll / max(tokens, 1), 700.0)),
                  "examples": len(examples), "decoded": len(decoded),
                  "decoding": "greedy" if t.beam_size == 1 else f"beam {t.beam_size}"}
        texts = [self.detokenize(h) for h in hyps]
        if decoded:
            result.update(self.score(texts, [e["reference"] for e in decoded]))
        predictions = [{"source": e["source"], "reference": e["reference"], "prediction": h}
                       for e, h in zip(decoded, texts)]
        return result, predictions

    def decode(self, body, example, t) -> list[int]:
        if t.beam_size == 1:
            return greedy(body, example["prompt"], t.max_new_tokens, example["eos"])
        return beam_search(body, example["prompt"], t.beam_size, t.max_new_tokens, example["eos"], t.length_penalty)

    def detokenize(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids).strip()


def _read_aligned(source_path: str, target_path: str) -> list[dict]:
    out = []
    src_lines = _lines(Path(source_path))
    tgt_lines = _lines(Path(target_path))
    if len(src_lines) != len(tgt_lines):
        raise DatasetError(f"{source_path} has {len(src_lines)} lines but {target_path} has {len(tgt_lines)}: "
                           f"aligned files need one segment a line in both")
    for n, (s, t) in enumerate(zip(src_lines, tgt_lines), 1):
        for path, text in ((source_path, s), (target_path, t)):
            if not text.strip():
                raise DatasetError(f"{path}:{n}: empty line (every line is one segment)")
        out.append({"source": s.strip(), "target": t.strip()})
    if not out:
        raise DatasetError(f"{source_path}: no lines")
    return out


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


class GenerationTask(PromptedTask):
    name = "generation"
    Section = GenerationSection

    def score(self, hyps, refs) -> dict:
        from fastlm.eval.metrics import rouge

        return rouge(hyps, refs)


class TranslationTask(PromptedTask):
    name = "translation"
    Section = TranslationSection

    def score(self, hyps, refs) -> dict:
        from fastlm.eval.metrics import bleu, chrf

        return {"bleu": bleu(hyps, refs), "chrf": chrf(hyps, refs)}
