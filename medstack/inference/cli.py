"""The ``medstack`` sub-commands that use a trained ensemble: predict, promote, export, models.

:func:`add_parsers` adds them to the main CLI's sub-parsers; :func:`run` runs one. Errors in the user's input
(a bad bundle, image, registry or reference) are medstack errors: ``medstack.cli.main`` reports them through
:func:`medstack.console.errors.report`, one line naming the file, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

COMMANDS = ("predict", "promote", "export", "models")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from medstack.console.flags import add_common_flags
    from medstack.inference.registry import REGISTRY_HELP
    from medstack.inference.schema import ENGINE_HELP, ENGINES

    predict = sub.add_parser("predict", help="score images with a trained run (folder) or <name>@<alias>")
    predict.add_argument("--model", required=True,
                         help="run folder, its model.json, <name>@<alias>, or models:/<name>@<alias> (MLflow)")
    predict.add_argument("--input", required=True, type=Path,
                         help="an image file, a folder (recursive), an npz with images, or a CSV with a 'path' column")
    predict.add_argument("--output", required=True, type=Path, help="predictions .csv or .parquet")
    predict.add_argument("--use", help="model whose label to output (default: the run's recommended model)")
    predict.add_argument("--batch-size", type=int, default=256)
    predict.add_argument("--on-bad-image", choices=("error", "skip"), default="error")
    predict.add_argument("--engine", choices=ENGINES, default="fused", help=ENGINE_HELP)
    predict.add_argument("--explain", type=Path, metavar="DIR", help="write Grad-CAM overlays (PNG) of the chosen model")
    predict.add_argument("--explain-limit", type=int, default=100, help="at most this many overlays (default 100)")
    promote = sub.add_parser("promote", help="point <name>@<alias> at a run folder in the registry")
    promote.add_argument("run", type=Path, help="run folder (runs/<run-id>)")
    promote.add_argument("--alias", default="champion")
    promote.add_argument("--name", help="registry name (default: the run's config name)")
    promote.add_argument("--reason", default="manual promotion")
    export = sub.add_parser("export", help="write the whole ensemble as one .keras model (and a SavedModel)")
    export.add_argument("--model", required=True,
                        help="run folder, <name>@<alias>, or models:/<name>@<alias> (MLflow)")
    export.add_argument("--to", required=True, type=Path, help="target .keras file")
    export.add_argument("--saved-model", type=Path,
                        help="also write a SavedModel (signatures serve and serving_default) to this folder")
    export.add_argument("--engine", choices=("fused", "student"), default="fused",
                        help="fused: every model of the run in one graph (default); student: the one-network model "
                             "alone")
    listing = sub.add_parser("models", help="list registry names, aliases and history")
    listing.add_argument("--history", action="store_true", help="print every registry event as JSON lines")
    for command in (predict, promote, export, listing):
        add_common_flags(command)
        command.add_argument("--registry", type=Path, help=REGISTRY_HELP)
        command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import logging

    from medstack.console.errors import debug_enabled
    from medstack.console.quiet import filtered_stderr, logger_level

    with contextlib.ExitStack() as stack:
        # Each fold model is traced once; TensorFlow's "retracing" warning about that says nothing useful here.
        stack.enter_context(logger_level("tensorflow", logging.ERROR))
        # TensorFlow's C++ start-up lines are dropped, as for `medstack run`; the progress bar goes to the terminal.
        terminal = sys.stderr if debug_enabled(args.debug) else stack.enter_context(filtered_stderr())
        if args.command == "predict":
            return _predict(args, progress=terminal if terminal.isatty() else None)
        return {"promote": _promote, "export": _export, "models": _models}[args.command](args)


def _predict(args: argparse.Namespace, progress: TextIO | None = None) -> int:
    from medstack.inference.bundle import load_bundle
    from medstack.inference.predict import decision_text, predict, skipped_path

    bundle = load_bundle(args.model, args.registry)
    model = bundle.model_for(args.use, args.engine)
    from medstack.inference.fused import make_scorer  # TensorFlow (seconds): after a wrong reference has failed
    print(f"model: {bundle.source} -> run {bundle.run_id} ({bundle.root}); labels from {model} "
          f"[{decision_text(bundle, model)}]", file=sys.stderr)
    on_batch = None
    if args.explain:
        from medstack.inference.explain import OverlayWriter

        on_batch = OverlayWriter(bundle, model, args.explain, limit=args.explain_limit)
    summary = predict(bundle, args.input, args.output, scorer=make_scorer(bundle, args.engine), use=model,
                      batch_size=args.batch_size, on_bad_image=args.on_bad_image, progress=progress,
                      on_batch=on_batch)
    rate = summary.images_per_second
    print(f"scored {summary.scored:,} image(s) in {summary.seconds:.1f} s ({rate:,.0f}/s" if rate >= 10 else
          f"scored {summary.scored:,} image(s) in {summary.seconds:.1f} s ({rate:.2f}/s, mostly tracing the graph once",
          end=f"); wrote {args.output}\n", file=sys.stderr)
    print("predicted: " + ", ".join(f"{name} {n:,}" for name, n in summary.class_counts.items()), file=sys.stderr)
    if summary.referred is not None:
        print(f"referred to a person: {summary.referred:,} of {summary.scored:,} ({summary.referral_rule}); see the "
              f"'refer' and 'refer_reason' columns", file=sys.stderr)
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    for ident, reason in summary.skipped[:10]:
        print(f"skipped {ident}: {reason}", file=sys.stderr)
    if summary.skipped:
        print(f"skipped {len(summary.skipped):,} unreadable image(s); all listed in {skipped_path(args.output)}",
              file=sys.stderr)
    if summary.warned_inputs:
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in summary.warnings.items())
        print(f"WARNING: {summary.warned_inputs:,} input(s) look unlike the training images ({kinds}); see the "
              f"'warnings' column of {args.output}", file=sys.stderr)
    if on_batch is not None:
        print(f"wrote {on_batch.written:,} Grad-CAM overlay(s) to {args.explain}", file=sys.stderr)
    return 0


def _promote(args: argparse.Namespace) -> int:
    from medstack.inference.registry import promote, registry_path
    from medstack.run_folder import read_bundle

    event = promote(args.run, args.alias, name=args.name, registry=args.registry, reason=args.reason)
    name = args.name or read_bundle(args.run)["name"]
    print(f"{name}@{args.alias} -> run {event['run_id']} (was {event['previous_run_id'] or 'unset'}); "
          f"recorded in {registry_path(args.registry)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from medstack.inference.bundle import load_bundle
    from medstack.inference.fused import export_fused

    bundle = load_bundle(args.model, args.registry)
    outputs = [bundle.model_for(None, args.engine)] if args.engine == "student" else bundle.models
    model = export_fused(bundle, args.to, args.saved_model, engine=args.engine)
    print(f"wrote {args.to} (run {bundle.run_id}: {len(model.layers)} layers, outputs {outputs})")
    if args.saved_model:
        print(f"wrote SavedModel {args.saved_model} (serving signature 'serve': pixels float32 "
              f"(None, {', '.join(map(str, bundle.input_shape))}) -> one (None, {len(bundle.classes)}) output per model)")
    print("load it with: import medstack.inference.fused; keras.saving.load_model(path, safe_mode=True)")
    return 0


def _models(args: argparse.Namespace) -> int:
    from medstack.inference.registry import history, read_registry, registry_path

    if args.history:
        for event in history(registry=args.registry):
            print(json.dumps(event))
        return 0
    models = read_registry(args.registry)["models"]
    if not models:
        print(f"no models registered in {registry_path(args.registry)}")
    else:  # say which registry: the rule picks one file, and a person should see which
        print(f"registry: {registry_path(args.registry)}", file=sys.stderr)
    for name, entry in models.items():
        for alias, target in entry["aliases"].items():
            print(f"{name}@{alias} -> {target['run_id']} ({target['path']}, since {target['since']})")
        print(f"  {len(entry['history'])} event(s); medstack models --history for all")
    return 0
