"""The accountability commands of the `fastlm` CLI: card, watermark detect, explain, and generate's
--watermark options. Imported by fastlm.cli when it builds its parser: nothing heavy at import time."""
from __future__ import annotations

import json


def add_watermark_options(p) -> None:
    """`fastlm generate`'s watermark options."""
    p.add_argument("--watermark", metavar="KEY_FILE", default=None,
                   help="embed a statistical watermark keyed by KEY_FILE (written by `fastlm keygen`)")
    p.add_argument("--watermark-gamma", type=float, default=0.25, metavar="G",
                   help="the green-list fraction of the vocabulary (default 0.25)")
    p.add_argument("--watermark-delta", type=float, default=2.0, metavar="D",
                   help="the logit bias of green tokens (default 2.0)")


def watermark_of(args):
    """The WatermarkKey that generate's options ask for, or None."""
    if args.watermark is None:
        return None
    from fastlm.accountability.watermark import WatermarkKey

    return WatermarkKey.from_file(args.watermark, gamma=args.watermark_gamma, delta=args.watermark_delta)


def add_accountability_parsers(sub) -> None:
    p = sub.add_parser("card", help="write RUN_DIR/MODEL_CARD.md from what the run directory records")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--intended-use", default=None, metavar="TEXT", help="the card's Intended use (default: a field "
                   "to fill in)")
    p.add_argument("--limitations", default=None, metavar="TEXT", help="the card's Limitations (default: a field "
                   "to fill in)")
    p.add_argument("--out", default=None, metavar="FILE", help="where to write it (default: RUN_DIR/MODEL_CARD.md)")
    p.set_defaults(func=_card)

    p = sub.add_parser("watermark", help="detect the watermark of `fastlm generate --watermark` in a text")
    # the CLI's parser class (its one-line errors) for the nested parsers too
    wsub = p.add_subparsers(dest="watermark_command", required=True, metavar="ACTION", parser_class=sub._parser_class)
    q = wsub.add_parser("detect", help="z-score and p-value that TEXT_FILE carries the watermark of KEY_FILE")
    q.add_argument("text_file", metavar="TEXT_FILE", help="the text (tokenized with --run's tokenizer), or token ids "
                   "separated by spaces when there is no --run")
    q.add_argument("--key", required=True, metavar="KEY_FILE")
    q.add_argument("--run", default=None, metavar="RUN_DIR", help="the run whose tokenizer generated the text")
    q.add_argument("--gamma", type=float, default=0.25, help="the green fraction used to generate (default 0.25)")
    q.add_argument("--all-pairs", action="store_true", help="score repeated (previous, token) pairs every time "
                   "(default: once, which keeps repetitive human text from looking watermarked)")
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    q.set_defaults(func=_watermark_detect)

    p = sub.add_parser("explain", help="per-token attributions of a prediction: integrated gradients and "
                                       "attention rollout, as HTML and PNG")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a language-model run or a classification task run")
    p.add_argument("--text", required=True, help="the input text")
    p.add_argument("--steps", type=int, default=50, help="integrated-gradients interpolation steps (default 50)")
    p.add_argument("--target", type=int, default=None, help="the token id (LM) or class (classification) to "
                   "explain (default: the model's prediction)")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write explain.html/.png/.json "
                   "(default: RUN_DIR/explain)")
    p.set_defaults(func=_explain)


def _card(args) -> int:
    from fastlm.accountability.card import write_model_card

    print(write_model_card(args.run_dir, intended_use=args.intended_use, limitations=args.limitations, out=args.out))
    return 0


def _watermark_detect(args) -> int:
    from fastlm.accountability.watermark import WatermarkKey, read_token_ids

    key = WatermarkKey.from_file(args.key, gamma=args.gamma)
    r = key.detect(read_token_ids(args.text_file, args.run), unique=not args.all_pairs)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"z {r['z']:.3f}  p_value {r['p_value']:.3g}  green {r['green']}/{r['scored']} "
              f"(expected {r['gamma'] * r['scored']:.1f} without the watermark)")
    return 0


def _explain(args) -> int:
    from fastlm.accountability.explain import explain_run

    r = explain_run(args.run_dir, args.text, steps=args.steps, target=args.target, out_dir=args.out)
    print(f"explained {r['prediction_label']!r}: f(x) - f(baseline) = {r['delta']:.4f}, attributions sum to "
          f"{r['attribution_sum']:.4f}")
    print(f"results: {r['html']} {r['png']}")
    return 0
