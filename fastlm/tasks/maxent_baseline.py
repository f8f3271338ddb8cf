"""scikit-learn's LogisticRegression on exactly the hashed features of a maxent classifier run: the
baseline that benchmarks/maxent_classifier.py and the tests compare `task.model = "maxent"` with.

    result = sklearn_baseline(run_dir)   # {"fastlm_accuracy", "sklearn_accuracy", "train_examples", ...}

The run's own tokenizer, data split and feature hashes (fastlm/tasks/maxent_classifier.py) give a
sparse count matrix (examples x hash_buckets); LogisticRegression (multinomial, L2, C) is fitted on
the training split and scored on the validation split the run reported.
"""
from __future__ import annotations

import json
from pathlib import Path


def feature_matrix(examples: list[dict], num_buckets: int):
    """scipy CSR (len(examples), num_buckets): the count of each feature bucket in each example."""
    import numpy as np
    from scipy.sparse import csr_matrix

    indptr = np.cumsum([0] + [len(e["features"]) for e in examples])
    indices = np.fromiter((f for e in examples for f in e["features"]), dtype=np.int64, count=int(indptr[-1]))
    matrix = csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(examples), num_buckets))
    matrix.sum_duplicates()
    return matrix


def sklearn_baseline(run_dir: str | Path, C: float = 1.0, max_iter: int = 2000) -> dict:
    """Accuracy of the finished maxent run (its metrics.json) and of LogisticRegression on the same features."""
    from sklearn.linear_model import LogisticRegression

    from fastlm.tasks.classification import ClassificationTask
    from fastlm.tasks.loop import load_task_run, read_task_data

    task = ClassificationTask()
    tc, _model, tok, info = load_task_run(task, run_dir)
    if tc.task.model != "maxent":
        raise ValueError(f"{run_dir}: task.model = {tc.task.model!r}, expected \"maxent\"")
    train_raw, val_raw, _ = read_task_data(task, tc)  # the run's split (seeded by train.seed)
    train, val = task.encode(tc, train_raw, tok, info), task.encode(tc, val_raw, tok, info)
    buckets = tc.task.hash_buckets
    classifier = LogisticRegression(C=C, max_iter=max_iter)
    classifier.fit(feature_matrix(train, buckets), [e["label"] for e in train])
    predicted = classifier.predict(feature_matrix(val, buckets))
    correct = sum(int(p == e["label"]) for p, e in zip(predicted, val))
    fastlm = json.loads((Path(run_dir) / "metrics.json").read_text())
    return {"fastlm_accuracy": fastlm["accuracy"], "sklearn_accuracy": correct / len(val),
            "train_examples": len(train), "validation_examples": len(val), "hash_buckets": buckets, "C": C}
