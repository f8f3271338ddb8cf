"""The maxent text classifier (`task.model = "maxent"`) against scikit-learn's LogisticRegression
fitted on exactly the same hashed unigram + bigram features, same data split, same run.

    python benchmarks/maxent_classifier.py                          # demo:langid:10000 (999 validation examples)
    python benchmarks/maxent_classifier.py --examples 3000          # the demo config's own size (300 validation)
    python benchmarks/maxent_classifier.py --set train.lr=0.01 --C 0.3

Prints both validation accuracies, their difference, and the wall time of each fit. The baseline is
fastlm/tasks/maxent_baseline.py (the run's tokenizer, split and feature hashes -> a sparse count matrix).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from fastlm.tasks import get_task
from fastlm.tasks.config import load_task_config
from fastlm.tasks.loop import finetune
from fastlm.tasks.maxent_baseline import sklearn_baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=10000, help="demo:langid size (train + validation)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="more overrides of classification-demo (e.g. train.lr=0.01)")
    parser.add_argument("--C", type=float, default=1.0, help="LogisticRegression's inverse L2 strength")
    parser.add_argument("--out", default=None, help="keep the run directory here (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the result as JSON here")
    args = parser.parse_args()

    task = get_task("classification")
    overrides = ["task.model=maxent", f"task.train=demo:langid:{args.examples}", *args.overrides]
    tc = load_task_config("classification-demo", task.Section, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.out) if args.out else Path(tmp) / "maxent"
        start = time.perf_counter()
        finetune(task, tc, run_dir, show_progress=False)
        fastlm_s = time.perf_counter() - start
        start = time.perf_counter()
        result = sklearn_baseline(run_dir, C=args.C)
        sklearn_s = time.perf_counter() - start  # includes re-encoding the data
    diff = result["fastlm_accuracy"] - result["sklearn_accuracy"]
    result.update(difference_points=100 * diff, fastlm_seconds=fastlm_s, sklearn_seconds=sklearn_s,
                  overrides=overrides)
    print(f"demo:langid:{args.examples}: {result['train_examples']} train / {result['validation_examples']} "
          f"validation examples, {result['hash_buckets']} feature buckets")
    print(f"  fastlm maxent (task loop, AdamW)        accuracy {100 * result['fastlm_accuracy']:.2f}%  "
          f"({fastlm_s:.1f} s: tokenizer, features, training, evaluation)")
    print(f"  sklearn LogisticRegression (C={args.C:g})  accuracy {100 * result['sklearn_accuracy']:.2f}%  "
          f"({sklearn_s:.1f} s: re-encoding and lbfgs)")
    print(f"  difference {100 * diff:+.2f} points")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
