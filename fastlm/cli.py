"""The `fastlm` command (also `python -m fastlm`, so `torchrun ... -m fastlm train ...` works).

    fastlm train CONFIG [--out RUN_DIR] [--set section.key=value ...] [--resume]
    fastlm distill CONFIG [--out RUN_DIR] [--set ...] [--resume] [--save-teacher DIR]   (a config with [distill])
    fastlm eval RUN_DIR
    fastlm generate RUN_DIR --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]
    fastlm plot RUN_DIR [--out PNG]
    fastlm export RUN_DIR --format hf --out DIR
    fastlm merge RUN_DIR --out DIR
    fastlm finetune TASK CONFIG [--out RUN_DIR] [--set section.key=value ...] [--resume]
    fastlm evaluate TASK RUN_DIR [--data FILE] [--out DIR] [--groups COLUMN]
    fastlm quantize RUN_DIR --scheme w8a8|w8a16 --out DIR [--skip NAME ...] [--smooth ALPHA] [--group-size G]
    fastlm prune RUN_DIR --out DIR [--sparsity S] [--pattern unstructured|2:4] [--scope layer|global]
    fastlm keygen [PATH] [--force]
    fastlm fairness probe RUN_DIR [--pairs FILE]
    fastlm bench [NAME ...] [--device cpu|cuda] [--out DIR] [--quick] [--list]
    fastlm embeddings train CONFIG [--out RUN_DIR] [--set section.key=value ...]
    fastlm embeddings neighbors RUN WORD [-k K]
    fastlm embeddings analogy RUN A B C [-k K]
    fastlm privacy audit RUN [--canaries N] [--reference RUN] [--samples K] [--seed S]
    fastlm generate RUN_DIR --prompt TEXT --watermark KEY_FILE [--watermark-gamma G] [--watermark-delta D]
    fastlm watermark detect TEXT_FILE --key KEY_FILE [--run RUN_DIR]
    fastlm card RUN_DIR [--intended-use TEXT] [--limitations TEXT] [--out FILE]
    fastlm explain RUN_DIR --text TEXT [--steps N] [--out DIR]

A problem with the input is reported as one line, "fastlm: error: ...", with a non-zero exit
status and no traceback (FASTLM_DEBUG=1 shows the traceback).
"""
from __future__ import annotations

import argparse
import os
import sys

from fastlm.accountability import commands as accountability

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other fastlm error
        self.exit(EXIT_USAGE, f"fastlm: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastlm", description="Train Transformer language models fast.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    _add_training_parsers(sub)
    _add_finished_run_parsers(sub)
    _add_bench_parser(sub)
    _add_prune_parser(sub)
    _add_fairness_parser(sub)
    _add_keygen_parser(sub)
    _add_embeddings_parser(sub)
    accountability.add_accountability_parsers(sub)
    _add_deid_parser(sub)
    return parser


def _add_run_options(p) -> None:
    """--out, --set, --resume, --quiet: the options of every command that trains into a run directory."""
    p.add_argument("--out", metavar="RUN_DIR", help="the run directory (default: ./runs/<config name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (a TOML value, or else a string); may repeat")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress messages")


def _add_training_parsers(sub) -> None:
    """train, distill, finetune: the commands that train."""
    p = sub.add_parser("train", help="train a model from a TOML config or a preset")
    p.add_argument("config", metavar="CONFIG", help="a TOML file or a preset name (tiny, gpt2-small, llama-1b, bert-tiny, ngram, hmm, maxent, lstm-tiny, gru-tiny)")
    _add_run_options(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("distill", help="train a student on a teacher's distribution: fastlm train with [distill]")
    p.add_argument("config", metavar="CONFIG", help="a TOML file or a preset name, with a [distill] section")
    _add_run_options(p)
    p.add_argument("--save-teacher", metavar="DIR", help="instead of training: run distill.teacher over the training "
                   "stream and store its top-k log-probabilities in DIR (then train with distill.teacher_store=DIR)")
    p.set_defaults(func=_distill)

    p = sub.add_parser("finetune", help="fine-tune on a task (classification, qa, generation, translation, speech, "
                                        "captioning, image_text_retrieval, image_classification)")
    p.add_argument("task", metavar="TASK", help="classification | qa | generation | translation | speech | captioning "
                                                "| image_text_retrieval | image_classification")
    p.add_argument("config", metavar="CONFIG", help="a task TOML file or a shipped demo config (classification-demo, "
                                                     "qa-demo, generation-demo, translation-demo, speech-demo)")
    p.add_argument("--out", metavar="RUN_DIR", help="the run directory (default: ./runs/<config name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, also task.KEY=VALUE; may repeat")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress messages")
    p.set_defaults(func=_finetune)


def _add_finished_run_parsers(sub) -> None:
    """eval, generate, evaluate, plot, export, merge, quantize: the commands that read a finished run."""
    p = sub.add_parser("eval", help="validation loss and perplexity of a finished run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(func=_eval)

    p = sub.add_parser("generate", help="sample text from a finished run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens (default 50)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with this mass")
    p.add_argument("--seed", type=int, default=0)
    accountability.add_watermark_options(p)
    p.set_defaults(func=_generate)

    p = sub.add_parser("evaluate", help="score a fine-tuned run: metrics.json and predictions.jsonl")
    p.add_argument("task", metavar="TASK")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", metavar="FILE", help="a dataset file (default: the run's validation split)")
    p.add_argument("--out", metavar="DIR", help="where to write the results (default: RUN_DIR/eval)")
    p.add_argument("--groups", metavar="COLUMN", help="the data column naming each example's group: also writes "
                                                      "fairness.json and fairness.png (classification)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("plot", help="plot training and validation loss to RUN_DIR/loss.png")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="PNG", help="where to write the image (default: RUN_DIR/loss.png)")
    p.set_defaults(func=_plot)

    p = sub.add_parser("export", help="write a finished run as a Hugging Face checkpoint directory")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", choices=["hf"], default="hf", help="hf: config.json + model.safetensors (transformers)")
    p.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) directory")
    p.set_defaults(func=_export)

    p = sub.add_parser("merge", help="fold a LoRA run's adapters into its base weights: a new plain run directory")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="DIR", help="the new run directory")
    p.set_defaults(func=_merge)

    p = sub.add_parser("quantize", help="int8-quantize a finished run into a new run directory")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--scheme", required=True, help="w8a8 (int8 weights and activations) or w8a16 (int8 weights)")
    p.add_argument("--out", required=True, metavar="DIR", help="the new directory (eval/generate work on it)")
    p.add_argument("--skip", action="append", default=[], metavar="NAME",
                   help="a module name or fnmatch pattern to keep in full precision, e.g. lm_head; may repeat")
    p.add_argument("--smooth", type=float, default=None, metavar="ALPHA",
                   help="SmoothQuant smoothing with migration strength ALPHA in [0, 1] (w8a8), e.g. 0.5")
    p.add_argument("--group-size", type=int, default=None, help="w8a16: one weight scale per G input columns")
    p.set_defaults(func=_quantize)


def _add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="run benchmarks against their baselines; write results.json and plots")
    p.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all; see --list)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", metavar="DIR", default="bench-results", help="results.json and PNGs go here")
    p.add_argument("--quick", action="store_true", help="fewer shapes and repeats (a smoke run)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per measurement (median reported)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and their baselines")
    p.set_defaults(func=_bench)


def _add_prune_parser(sub) -> None:
    p = sub.add_parser("prune", help="magnitude-prune a finished run's block linears into a new run directory")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="DIR", help="the new directory (eval/generate/init_from use it)")
    p.add_argument("--sparsity", type=float, default=None, help="the fraction of weights to zero (unstructured), "
                   "e.g. 0.5; N:M patterns imply 1 - N/M")
    p.add_argument("--pattern", default="unstructured", help="unstructured (default) or N:M structured, e.g. 2:4 "
                   "(the CPU then runs a compressed 2:4 kernel)")
    p.add_argument("--scope", default="layer", choices=["layer", "global"],
                   help="unstructured: the sparsity per layer (default) or over all pruned layers together")
    p.add_argument("--no-eval", action="store_true", help="skip the perplexity before/after")
    p.set_defaults(func=_prune)


def _prune(args) -> int:
    from fastlm.train.prune import prune_run

    r = prune_run(args.run_dir, args.out, args.sparsity, args.pattern, args.scope, evaluate=not args.no_eval)
    print(f"pruned {r['layers']} linear layers ({r['pattern']}, {r['scope']}): sparsity {r['sparsity']:.4f} "
          f"of {r['weights']:,} weights")
    if "after" in r:
        b, a = r["before"]["val_ppl"], r["after"]["val_ppl"]
        print(f"val_ppl {b:.4f} -> {a:.4f} ({(a / b - 1) * 100:+.2f}%)")
    print(f"run directory: {r['out']}")
    return 0


def _add_fairness_parser(sub) -> None:
    p = sub.add_parser("fairness", help="bias probes of a language model")
    fsub = p.add_subparsers(dest="fairness_command", required=True, metavar="ACTION", parser_class=_Parser)
    q = fsub.add_parser("probe", help="stereotype preference on sentence pairs that differ in a group term: "
                                      "RUN_DIR/probe.json")
    q.add_argument("run_dir", metavar="RUN_DIR", help="a fastlm run or a Hugging Face checkpoint directory")
    q.add_argument("--pairs", metavar="FILE", help="a CSV in the CrowS-Pairs layout (sent_more, sent_less, "
                   "stereo_antistereo, bias_type); default: the built-in probe set")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_fairness_probe)


def _fairness_probe(args) -> int:
    from fastlm.fairness import format_table, probe_run

    print(format_table(probe_run(args.run_dir, pairs=args.pairs, show_progress=not args.quiet)))
    print(f"results: {os.path.join(args.run_dir, 'probe.json')}")
    return 0


def _add_keygen_parser(sub) -> None:
    p = sub.add_parser("keygen", help="write a new key for [checkpoint] encrypt = true (mode 0600)")
    p.add_argument("path", metavar="PATH", nargs="?", default="fastlm.key",
                   help="the key file to create (default: fastlm.key); use it as checkpoint.key_file")
    p.add_argument("--force", action="store_true", help="replace an existing key file")
    p.set_defaults(func=_keygen)


def _add_deid_parser(sub) -> None:
    p = sub.add_parser("deid", help="de-identify text/JSONL files (emails, phones, cards, ...) into DIR, with a report")
    p.add_argument("inputs", metavar="INPUT", nargs="+", help="text or .jsonl files")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (deid_report.json goes there too)")
    p.add_argument("--types", default="all", help="comma-separated entity types, or 'all' (default)")
    p.add_argument("--operation", default="anonymize",
                   choices=["anonymize", "pseudonymize", "generalize", "perturb", "suppress"])
    p.add_argument("--key-file", metavar="PATH", help="HMAC key for pseudonymize and perturb (e.g. from fastlm keygen)")
    p.add_argument("--text-field", default="text", help="the JSONL field holding the text (default: text)")
    p.set_defaults(func=_deid)


def _deid(args) -> int:
    from fastlm.data.deid.corpus import read_key_file
    from fastlm.data.deid.run import deidentify_files

    types = "all" if args.types == "all" else [t.strip() for t in args.types.split(",") if t.strip()]
    key = read_key_file(args.key_file, "--key-file") if args.key_file else None
    print(deidentify_files(args.inputs, args.out, types, args.operation, key, args.text_field))
    return 0


def _add_embeddings_parser(sub) -> None:
    p = sub.add_parser("embeddings", help="static word embeddings: word2vec (skipgram, cbow) and GloVe")
    esub = p.add_subparsers(dest="embeddings_command", required=True, metavar="ACTION", parser_class=_Parser)
    q = esub.add_parser("train", help="train word vectors from a TOML config or a preset (word2vec, cbow, glove)")
    q.add_argument("config", metavar="CONFIG", help="a TOML file or a preset name (word2vec, cbow, glove)")
    q.add_argument("--out", metavar="RUN_DIR", help="the run directory (default: ./runs/<config name>)")
    q.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. embeddings.dim=50; may repeat")
    q.add_argument("--quiet", action="store_true", help="no progress messages")
    q.set_defaults(func=_embeddings_train)
    q = esub.add_parser("neighbors", help="the nearest words (cosine) of WORD")
    q.add_argument("run", metavar="RUN", help="an embeddings run directory or a vectors file")
    q.add_argument("word", metavar="WORD")
    q.add_argument("-k", type=int, default=10, help="how many (default 10)")
    q.set_defaults(func=_embeddings_neighbors)
    q = esub.add_parser("analogy", help="A is to B as C is to ...: the words nearest B - A + C")
    q.add_argument("run", metavar="RUN", help="an embeddings run directory or a vectors file")
    q.add_argument("a", metavar="A")
    q.add_argument("b", metavar="B")
    q.add_argument("c", metavar="C")
    q.add_argument("-k", type=int, default=10, help="how many (default 10)")
    q.set_defaults(func=_embeddings_analogy)

    p = sub.add_parser("privacy", help="privacy audits of a finished run")
    psub = p.add_subparsers(dest="privacy_command", required=True, metavar="ACTION", parser_class=_Parser)
    q = psub.add_parser("audit", help="membership inference (ROC-AUC, TPR at 1%% FPR) and canary exposure: "
                                      "RUN_DIR/audit.json, audit_roc.png")
    q.add_argument("run_dir", metavar="RUN")
    q.add_argument("--canaries", type=int, default=None, metavar="N", help="audit the first N planted canaries "
                   "(default: all; 0: none)")
    q.add_argument("--reference", metavar="RUN", help="a reference run trained on held-out data (default: the "
                   "audit trains one with the run's config in RUN/audit-reference)")
    q.add_argument("--samples", type=int, default=1000, metavar="K", help="members and non-members each (at most; "
                   "default 1000)")
    q.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the samples, candidates, bootstrap")
    q.add_argument("--quiet", action="store_true", help="no progress bar or progress messages")
    q.set_defaults(func=_privacy_audit)


def _train(args) -> int:
    from fastlm.train import Trainer, load_config

    config = load_config(args.config, args.overrides)
    Trainer(config, out_dir=args.out, resume=args.resume, show_progress=not args.quiet).fit()
    return 0


def _distill(args) -> int:
    from fastlm.train import Trainer, load_config
    from fastlm.train.errors import ConfigError

    config = load_config(args.config, args.overrides)
    if args.save_teacher:
        from fastlm.distill.store import save_teacher

        print(f"teacher store: {save_teacher(config, args.save_teacher, not args.quiet)}")
        return 0
    if not config.distill.enabled:
        raise ConfigError("fastlm distill: the config has no teacher (set distill.teacher or distill.teacher_store)")
    Trainer(config, out_dir=args.out, resume=args.resume, show_progress=not args.quiet).fit()
    return 0


def _eval(args) -> int:
    from fastlm.train.evaluate import evaluate_run

    r = evaluate_run(args.run_dir, show_progress=True)
    print(f"val_loss {r['val_loss']:.4f}  val_ppl {r['val_ppl']:.4f}  ({r['tokens']} tokens)")
    return 0


def _generate(args) -> int:
    from fastlm.train.generate import generate_text

    print(generate_text(args.run_dir, args.prompt, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                        watermark=accountability.watermark_of(args)))
    return 0


def _finetune(args) -> int:
    from fastlm.tasks import finetune

    r = finetune(args.task, args.config, args.overrides, out_dir=args.out, show_progress=not args.quiet,
                 resume=args.resume)
    _print_task_metrics(r["metrics"])
    print(f"run directory: {r['run_dir']}")
    return 0


def _evaluate(args) -> int:
    from fastlm.tasks import evaluate

    r = evaluate(args.task, args.run_dir, data=args.data, out_dir=args.out, groups=args.groups)
    _print_task_metrics(r["metrics"])
    print(f"results: {r['out_dir']}")
    return 0


def _print_task_metrics(metrics: dict) -> None:
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    print("  ".join(f"{k} {v:.4g}" for k, v in numbers.items()))


def _plot(args) -> int:
    from fastlm.train.plot import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0


def _bench(args) -> int:
    from fastlm.bench.harness import run_benchmarks
    from fastlm.bench.registry import Options, suite_names

    if args.list:
        print("\n".join(suite_names()))
        return 0
    results = run_benchmarks(args.names, Options(device=args.device, quick=args.quick, repeat=args.repeat),
                             out_dir=args.out)
    failed = [name for name, entry in results["suites"].items() if "error" in entry]
    print(f"results: {os.path.join(args.out, 'results.json')}")
    return EXIT_ERROR if failed else 0


def _embeddings_train(args) -> int:
    from fastlm.embeddings.config import load_embeddings_config
    from fastlm.embeddings.run import train_embeddings_run

    config = load_embeddings_config(args.config, args.overrides)
    r = train_embeddings_run(config, out_dir=args.out, show_progress=not args.quiet)
    print(f"run directory: {r['run_dir']}")
    return 0


def _embeddings_neighbors(args) -> int:
    from fastlm.embeddings.run import load_run_vectors

    _print_scored(load_run_vectors(args.run).most_similar(args.word, args.k))
    return 0


def _embeddings_analogy(args) -> int:
    from fastlm.embeddings.run import load_run_vectors

    _print_scored(load_run_vectors(args.run).analogy(args.a, args.b, args.c, args.k))
    return 0


def _privacy_audit(args) -> int:
    from fastlm.train.errors import FastlmError

    try:
        from fastlm.privacy.audit import audit_run, format_table
    except ImportError as e:  # scikit-learn (and the scipy it brings) are optional
        raise FastlmError(f"fastlm privacy audit needs scikit-learn and scipy ({e}): pip install 'fastlm[eval]'") from None
    r = audit_run(args.run_dir, canaries=args.canaries, reference=args.reference, samples=args.samples,
                  seed=args.seed, show_progress=not args.quiet)
    print(format_table(r))
    print(f"results: {os.path.join(args.run_dir, 'audit.json')}")
    return 0


def _print_scored(pairs: list[tuple[str, float]]) -> None:
    for word, score in pairs:
        print(f"{word}\t{score:.4f}")


def _quantize(args) -> int:
    from fastlm.train.quantize import quantize_run

    r = quantize_run(args.run_dir, args.out, args.scheme, skip=args.skip, smooth=args.smooth,
                     group_size=args.group_size)
    print(f"quantized {r['layers']} linear layers ({r['scheme']}): {r['bytes_before'] / 2**20:.2f} MiB -> "
          f"{r['bytes_after'] / 2**20:.2f} MiB")
    print(f"run directory: {r['out']}")
    return 0


def _keygen(args) -> int:
    from fastlm.privacy.encryption import write_key_file

    print(write_key_file(args.path, force=args.force))
    return 0


def _export(args) -> int:
    from fastlm.train.export import export_run

    print(export_run(args.run_dir, args.out, format=args.format))
    return 0


def _merge(args) -> int:
    from fastlm.train.lora import merge_run

    print(merge_run(args.run_dir, args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("fastlm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if os.environ.get("FASTLM_DEBUG") or not _is_user_error(e):
            raise  # a bug: the traceback is what a report needs
        if not _said_by_rank_zero(e):
            print(f"fastlm: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        _release_process_groups()


def _release_process_groups() -> None:
    """Tear down the process groups a command used before the interpreter exits. Left to the exit's
    static destruction, the threads of gloo and of the launcher's store now and then abort the
    process ("terminate called without an active exception") after a run that succeeded."""
    if "fastlm.parallel.mesh" not in sys.modules:
        return  # nothing distributed ran
    from fastlm.parallel.mesh import destroy_mesh

    try:
        destroy_mesh()
    except Exception:  # noqa: BLE001  (a peer already gone: nothing left to release)
        pass


def _is_user_error(e: Exception) -> bool:
    from fastlm.parallel.mesh import CollectiveError
    from fastlm.train.errors import FastlmError

    # ValueError / OSError: what the data and model layers raise for bad input and missing files.
    # CollectiveError: another rank died or hung (the message names it and the collective).
    return isinstance(e, (FastlmError, ValueError, OSError, CollectiveError))


def _said_by_rank_zero(e: Exception) -> bool:
    """Under torchrun every rank reads the same config: rank 0 alone reports a config error."""
    from fastlm.train.errors import ConfigError

    return isinstance(e, ConfigError) and os.environ.get("RANK", "0") != "0"


def _one_line(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror and e.filename:
        text = f"{e.strerror}: {e.filename}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())
