"""``medstack evaluate``: score another site's labelled images with a trained run and write an evaluation folder.

:func:`add_parsers` adds the sub-command to the main CLI; errors in the user's input (the model reference, the
data's classes or labels, an npz of another image size, the output folder) are medstack errors, reported by
``medstack.cli.main`` as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from medstack.console.flags import add_common_flags
    from medstack.inference.registry import REGISTRY_HELP
    from medstack.inference.schema import ENGINE_HELP, ENGINES

    evaluate = sub.add_parser("evaluate", help="judge a trained run (folder) or <name>@<alias> on another site's "
                                               "labelled images; writes evaluations/<id>/")
    evaluate.add_argument("--model", required=True,
                          help="run folder, its model.json, <name>@<alias>, or models:/<name>@<alias> (MLflow)")
    evaluate.add_argument("--data", required=True, type=Path,
                          help="labelled images: an npz with labels (and class_names) or a folder with one "
                               "sub-folder per class")
    evaluate.add_argument("--class-names", type=_names, metavar="A,B,...",
                          help="an npz's class names, label i = the i-th name, when the file has no class_names key")
    evaluate.add_argument("--output-dir", type=Path, default=Path("evaluations"),
                          help="where evaluation folders go (default: evaluations)")
    evaluate.add_argument("--use", help="the model to headline and recalibrate (default: the run's recommended model)")
    evaluate.add_argument("--recalibrate", nargs="?", type=_fraction, const=0.5, metavar="FRACTION",
                          help="refit temperature, decision and conformal quantiles on a stratified FRACTION of "
                               "each class (default 0.5) and judge before and after on the rest; without it "
                               "nothing is fitted on this data")
    evaluate.add_argument("--seed", type=int, help="seed of the --recalibrate split (default: the run's seed)")
    evaluate.add_argument("--bootstrap", type=int, metavar="N",
                          help="bootstrap resamples for the intervals (default: the run's report.bootstrap)")
    evaluate.add_argument("--batch-size", type=int, default=256)
    evaluate.add_argument("--on-bad-image", choices=("error", "skip"), default="error")
    evaluate.add_argument("--engine", choices=ENGINES, default="fused", help=ENGINE_HELP)
    add_common_flags(evaluate)
    evaluate.add_argument("--registry", type=Path, help=REGISTRY_HELP)
    evaluate.set_defaults(handler=run)


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",")]
    if len(names) < 2 or not all(names):
        raise argparse.ArgumentTypeError(f"expected at least two comma-separated class names, got {text!r}")
    return names


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction strictly between 0 and 1, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    import contextlib
    import logging

    from medstack.console.errors import debug_enabled
    from medstack.console.quiet import filtered_stderr
    from medstack.evaluation.run import EvaluationRequest, run_evaluation, summary_lines

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # each fold model is traced once; nothing to act on
    request = EvaluationRequest(
        model=args.model, data=str(args.data), registry=str(args.registry) if args.registry else None,
        output_dir=str(args.output_dir), use=args.use, class_names=args.class_names, engine=args.engine,
        batch_size=args.batch_size, on_bad_image=args.on_bad_image, bootstrap=args.bootstrap,
        recalibrate=args.recalibrate, seed=args.seed)
    with contextlib.ExitStack() as stack:
        if not debug_enabled(args.debug):
            stack.enter_context(filtered_stderr())  # TensorFlow's C++ start-up lines, as for predict
        folder, evaluation = run_evaluation(request)
    print("\n".join(summary_lines(folder, evaluation)), file=sys.stderr)
    print(folder)
    return 0
