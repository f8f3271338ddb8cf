"""Text classification: a GPT (last-token or mean pooling) or an Encoder (pooled [CLS]) with a
linear head, or (task.model = "maxent") a maximum-entropy classifier over hashed unigrams and bigrams
of the token ids (fastlm/tasks/maxent_classifier.py); metrics accuracy, precision/recall/F1 (macro and micro), ROC-AUC, confusion matrix.

    [task]
    train = "train.jsonl"         # or .csv/.tsv, or "demo:langid"
    text_field = "text"
    label_field = "label"
    labels = ["neg", "pos"]       # optional: fixes the classes and their order (else: sorted, from train)
    pooling = "auto"              # auto (decoder: last, encoder: cls) | last | mean | cls
    k_folds = 0                   # > 1: k-fold cross-validation, one model per fold
    model = "transformer"         # transformer ([model]: a GPT or an encoder) | maxent (logistic
                                  # regression over hashed unigrams and bigrams of the token ids)
    hash_buckets = 262144         # maxent: feature buckets
    group_field = "group"         # optional: the column naming each example's group: evaluation writes
                                  # fairness.json and fairness.png (fastlm.eval.fairness), and
                                  # [train] debias = "adversarial" hides the group (fastlm/tasks/debias.py)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastlm.tasks.backbone import build_backbone, d_model, hidden_states, is_encoder
from fastlm.tasks.base import DataFiles, Task
from fastlm.tasks.datasets import DatasetError, Record, label_value, read_records, text_value
from fastlm.tasks.debias import DebiasedClassifier, debiased_task_loss
from fastlm.tasks.maxent_classifier import (
    HashedFeatureBody,
    MaxEntClassifier,
    pad_features,
    text_features,
)
from fastlm.tasks.text import encode, pad_batch
from fastlm.train.errors import ConfigError

POOLINGS = ("auto", "last", "mean", "cls")
CLASSIFIER_MODELS = ("transformer", "maxent")


@dataclass
class ClassificationSection(DataFiles):
    text_field: str = "text"
    label_field: str = "label"
    labels: list[str] | None = None
    pooling: str = "auto"
    k_folds: int = 0
    model: str = "transformer"
    hash_buckets: int = 2**18
    group_field: str | None = None

    def validate(self) -> None:
        if self.model not in CLASSIFIER_MODELS:
            raise ConfigError(f"task.model = {self.model!r}: expected one of {', '.join(CLASSIFIER_MODELS)}")
        if isinstance(self.hash_buckets, bool) or not isinstance(self.hash_buckets, int) or \
                not 1 <= self.hash_buckets <= 2**31 - 1:
            raise ConfigError(f"task.hash_buckets = {self.hash_buckets!r}: expected an integer in [1, 2**31 - 1]")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"task.pooling = {self.pooling!r}: expected one of {', '.join(POOLINGS)}")
        if self.k_folds < 0 or self.k_folds == 1:
            raise ConfigError(f"task.k_folds = {self.k_folds}: expected 0 (off) or at least 2")
        if self.labels is not None and (len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)):
            raise ConfigError(f"task.labels = {self.labels}: expected at least 2 distinct labels")


class SequenceClassifier(nn.Module):
    """body -> pooled vector -> dropout -> linear (num_labels). forward(batch) -> {"logits", "loss"}."""

    def __init__(self, body: nn.Module, num_labels: int, pooling: str = "auto"):
        super().__init__()
        self.encoder = is_encoder(body)
        if pooling == "auto":
            pooling = "cls" if self.encoder else "last"
        if pooling == "cls" and not self.encoder:
            raise ConfigError('task.pooling = "cls": only for encoders (a decoder pools its "last" token)')
        self.pooling = pooling
        if not self.encoder:
            body.lm_head = None  # unused here (and an unused parameter would stall data parallelism)
        self.body = body
        self.head = nn.Linear(d_model(body), num_labels)
        nn.init.normal_(self.head.weight, 0.0, 0.02)
        nn.init.zeros_(self.head.bias)

    def pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return self.body.pooled(h)
        if self.pooling == "mean":
            m = mask.to(h.dtype)[..., None]
            return (h * m).sum(1) / m.sum(1).clamp_min(1)
        last = mask.sum(1) - 1  # right padding: the last real token
        return h[torch.arange(h.shape[0], device=h.device), last]

    def forward(self, batch: dict) -> dict:
        h = hidden_states(self.body, batch["input_ids"], batch["attention_mask"])
        pooled = self.pool(h, batch["attention_mask"])
        logits = self.head(pooled).float()
        out = {"logits": logits, "pooled": pooled}
        if "labels" in batch:
            out["loss"] = F.cross_entropy(logits, batch["labels"])
        return out


class ClassificationTask(Task):
    name = "classification"
    Section = ClassificationSection

    def read_split(self, tc, path: Path, info: dict | None) -> list[dict]:
        t = tc.task
        records = read_records(path, (t.text_field, t.label_field) + ((t.group_field,) if t.group_field else ()))
        known = set(info["labels"]) if info else set(t.labels) if t.labels else None
        hint = f"known labels: {', '.join(sorted(known))}" if known else ""
        out = []
        for r in records:
            label = label_value(r, t.label_field, (lambda x: x in known) if known else None, hint)
            out.append({"text": text_value(r, t.text_field), "label": label})
            if t.group_field:
                out[-1]["group"] = group_value(r, t.group_field)
        return out

    def make_info(self, tc, records) -> dict:
        labels = tc.task.labels or sorted({r["label"] for r in records})
        if len(labels) < 2:
            raise DatasetError(f"the training data has only the label {labels[0]!r}: a classifier needs two or more")
        info = {"labels": list(labels)}
        if tc.task.group_field:
            info["groups"] = sorted({r["group"] for r in records})
            if tc.config.train.debias != "none" and len(info["groups"]) < 2:
                raise DatasetError(f"task.group_field = {tc.task.group_field!r}: the training data has only the "
                                   f"group {info['groups'][0]!r}: train.debias needs two or more")
        return info

    def tokenizer_texts(self, records) -> list[str]:
        return [r["text"] for r in records]

    def encode(self, tc, records, tok, info) -> list[dict]:
        from fastlm.data.tokenizer import find_eos_id

        eos, width = find_eos_id(tok), tc.config.data.seq_len
        index = {label: i for i, label in enumerate(info["labels"])}
        encoder = tc.config.model.is_encoder
        groups = {g: i for i, g in enumerate(info.get("groups", []))}
        out = []
        for r, ids in zip(records, encode(tok, [r["text"] for r in records])):
            # Decoder: the text then an end token whose state sums it up; encoder: a leading [CLS]-like token.
            ids = [eos] + ids[:width - 1] if encoder else ids[:width - 1] + [eos]
            example = {"ids": ids, "label": index[r["label"]], "text": r["text"]}
            if "group" in r:  # its index for the adversary (-1: a group the training data lacks)
                example["group"] = r["group"]
                example["group_id"] = groups.get(r["group"], -1)
            if tc.task.model == "maxent":
                example["features"] = text_features(ids, tc.task.hash_buckets)
                example["num_buckets"] = tc.task.hash_buckets
            out.append(example)
        return out

    def build_body(self, tc) -> tuple:
        """(the Transformer backbone, or a maxent classifier's feature "body"; tokenizer.json or None)."""
        check_debias(tc)
        if tc.task.model != "maxent":
            return build_backbone(tc)
        for bad, key in ((tc.config.model.init_from, "model.init_from"),
                         (tc.config.train.adversarial != "none", "train.adversarial"),
                         (tc.config.train.debias != "none", "train.debias")):
            if bad:
                raise ConfigError(f"{key}: not available with task.model = \"maxent\" (a classifier without a backbone)")
        return HashedFeatureBody(tc.config.model.vocab_size, tc.task.hash_buckets), None

    def build_model(self, tc, body, info) -> nn.Module:
        if tc.task.model == "maxent":
            return MaxEntClassifier(tc.task.hash_buckets, len(info["labels"]))
        model = SequenceClassifier(body, len(info["labels"]), tc.task.pooling)
        if tc.config.train.debias == "adversarial":
            return DebiasedClassifier(model, d_model(body), len(info["labels"]), len(info["groups"]),
                                      tc.config.train.debias_weight)
        return model

    def loss_of(self, tc):
        """The training step's loss: with train.debias, the task loss plus the group adversary's."""
        from fastlm.train.step import task_loss

        return debiased_task_loss if tc.config.train.debias == "adversarial" else task_loss

    def collate(self, examples) -> dict:
        ids, mask = pad_batch([e["ids"] for e in examples], pad_id=0)
        batch = {"input_ids": ids, "attention_mask": mask,
                 "labels": torch.tensor([e["label"] for e in examples], dtype=torch.long)}
        if examples and "features" in examples[0]:
            batch["features"] = pad_features([e["features"] for e in examples], examples[0]["num_buckets"])
        if examples and "group_id" in examples[0]:
            batch["groups"] = torch.tensor([e["group_id"] for e in examples], dtype=torch.long)
        return batch

    @torch.no_grad()
    def predict(self, model, examples, device, autocast, batch_size) -> torch.Tensor:
        """Class probabilities (N, num_labels)."""
        was_training = model.training
        model.eval()
        probs = []
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in self.collate(examples[i:i + batch_size]).items()}
            with autocast:
                probs.append(model(batch)["logits"].float().softmax(-1).cpu())
        model.train(was_training)
        return torch.cat(probs)

    def evaluate(self, model, examples, info, device, autocast, batch_size, tc=None):
        from fastlm.eval import metrics as M

        labels = info["labels"]
        probs = self.predict(model, examples, device, autocast, batch_size)
        y_true = [e["label"] for e in examples]
        y_pred = probs.argmax(-1).tolist()
        k = len(labels)
        result = {
            "loss": F.nll_loss(probs.clamp_min(1e-12).log(), torch.tensor(y_true)).item(),
            "accuracy": M.accuracy(y_true, y_pred),
            "precision_macro": M.precision(y_true, y_pred, average="macro", labels=list(range(k))),
            "recall_macro": M.recall(y_true, y_pred, average="macro", labels=list(range(k))),
            "f1_macro": M.f1(y_true, y_pred, average="macro", labels=list(range(k))),
            "precision_micro": M.precision(y_true, y_pred, average="micro", labels=list(range(k))),
            "recall_micro": M.recall(y_true, y_pred, average="micro", labels=list(range(k))),
            "f1_micro": M.f1(y_true, y_pred, average="micro", labels=list(range(k))),
            "roc_auc": _roc_auc(M, y_true, probs, k),
            "examples": len(examples),
            "labels": labels,
            "confusion_matrix": M.confusion_matrix(y_true, y_pred, labels=list(range(k))).tolist(),
        }
        predictions = [{"text": e["text"], "label": labels[e["label"]], "prediction": labels[p],
                        "probabilities": {lab: round(float(q), 6) for lab, q in zip(labels, row)}}
                       for e, p, row in zip(examples, y_pred, probs.tolist())]
        if examples and "group" in examples[0]:  # the headline gaps, logged with the other metrics
            for e, row in zip(examples, predictions):
                row["group"] = e["group"]
            report = fairness_of(predictions, labels, n_bootstrap=0)
            result.update({f"fairness_{k}": None if math.isnan(v["value"]) else v["value"]  # NaN: undefined
                           for k, v in report.gaps.items()})
            if isinstance(model, DebiasedClassifier):
                from fastlm.tasks.debias import adversary_accuracy

                batches = ({k: v.to(device) for k, v in self.collate(examples[i:i + batch_size]).items()}
                           for i in range(0, len(examples), batch_size))
                result["adversary_group_accuracy"] = adversary_accuracy(model, batches)
        return result, predictions

    def report(self, out_dir: Path, metrics: dict, predictions: list, info: dict) -> None:
        cm = {"labels": metrics["labels"], "matrix": metrics["confusion_matrix"],
              "rows": "true label", "columns": "predicted label"}
        (out_dir / "confusion_matrix.json").write_text(json.dumps(cm, indent=1, ensure_ascii=False))
        plot_confusion_matrix(metrics["confusion_matrix"], metrics["labels"], out_dir / "confusion_matrix.png")
        if predictions and "group" in predictions[0]:
            from fastlm.eval.fairness_files import write_fairness

            write_fairness(out_dir, fairness_of(predictions, metrics["labels"]))


def fairness_of(predictions: list[dict], labels: list, **kwargs):
    """fastlm.eval.fairness.group_report of predictions with a "group" (probabilities as scores)."""
    from fastlm.eval.fairness import group_report

    scores = [[p["probabilities"][lab] for lab in labels] for p in predictions]
    return group_report([p["label"] for p in predictions], [p["prediction"] for p in predictions],
                        [p["group"] for p in predictions], scores=scores, labels=labels, **kwargs)


def group_value(record: Record, field: str) -> str:
    """An example's group: a non-empty string, or an integer (as its decimal string)."""
    value = record.fields[field]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise DatasetError(f"{record.where}: group field {field!r} must be a non-empty string or an integer, "
                           f"got {value!r}")
    return str(value)


def check_debias(tc) -> None:
    """train.debias: a classifier with a group column, trained without DP-SGD."""
    if tc.config.train.debias == "none":
        return
    if not tc.task.group_field:
        raise ConfigError(f"train.debias = {tc.config.train.debias!r}: needs task.group_field (the data column "
                          f"naming each example's group)")
    if tc.config.privacy.dp_sgd:
        raise ConfigError("train.debias: not available with privacy.dp_sgd (the adversary's loss couples the "
                          "examples of a batch)")


def _roc_auc(M, y_true, probs, k) -> float | None:
    """One-vs-rest macro ROC-AUC; None when a class is missing from y_true (undefined)."""
    if len(set(y_true)) < k:
        return None
    if k == 2:
        return M.roc_auc(y_true, probs[:, 1].numpy())
    return M.roc_auc(y_true, probs.numpy(), multi_class="ovr", labels=list(range(k)))


def plot_confusion_matrix(matrix, labels, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * k, 1.0 + 0.6 * k))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max(max(row) for row in matrix) or 1
    for i in range(k):
        for j in range(k):
            ax.text(j, i, matrix[i][j], ha="center", va="center",
                    color="white" if matrix[i][j] > top / 2 else "black", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
