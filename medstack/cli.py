"""``medstack`` console script: a thin entry over the Prefect flow.

Sub-commands register themselves: a module in ``COMMAND_MODULES`` has ``add_parsers(sub)``, adds its parsers with
their own ``--debug``/``-q``/``-v`` (medstack.console.flags) and sets ``handler=<function(args) -> exit code>``. Errors of any command reach
the terminal as a few lines (medstack.console.errors): exit 2 for bad input or config, 1 for a failed run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from pathlib import Path

from medstack.console import errors
from medstack.console.flags import add_common_flags
from medstack.console.quiet import NORMAL, QUIET, VERBOSE, quiet_environment

COMMAND_MODULES = ("medstack.console.runs", "medstack.inference.cli", "medstack.evaluation.cli",
                   "medstack.serving.cli")


def _config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="YAML config, e.g. configs/smoke.yaml")
    parser.add_argument("--data", help="npz file or image folder (data.source follows the path)")
    parser.add_argument("--output-dir", help="override runtime.output_dir (where run folders go)")
    parser.add_argument("--cache-dir", help="override runtime.cache_dir (fold cache shared by runs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field by dotted key, e.g. --set training.epochs=2 (value read as YAML)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medstack", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a stacking/voting ensemble of imbalance-aware CNNs on medical images (a Prefect DAG).",
        epilog="examples:\n  medstack run --config configs/smoke.yaml --data ../shared/data/pneumoniamnist.npz\n"
               "  medstack run --config configs/breakhis.yaml --data my_images/ --set training.epochs=5\n"
               "  medstack check-config --config configs/smoke.yaml --data my_images/\n"
               "  medstack runs\n  medstack compare RUN_A RUN_B\n\n"
               "`medstack COMMAND --help` lists a command's flags.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    notes = "no notes on what --data switched in the config (errors still print)"
    run = sub.add_parser("run", help="train the ensemble and write runs/<run-id>/")
    add_common_flags(run, quiet="print only the run folder (and errors)",
                     verbose="show Prefect's logs (task runs, temporary server) as they come")
    _config_flags(run)
    run.set_defaults(handler=run_command)
    check = sub.add_parser("check-config", help="validate a config (with run's flags) and print it resolved")
    add_common_flags(check, quiet=notes)
    _config_flags(check)
    check.set_defaults(handler=check_config_command)
    serve = sub.add_parser(
        "serve", help="serve the flow as a Prefect deployment from this process (no work pool or worker needed)"
    )
    add_common_flags(serve, quiet=notes)
    _config_flags(serve)
    serve.add_argument("--name", help="deployment name (default: the config's name)")
    serve.add_argument("--cron", help='retrain schedule, e.g. "0 3 * * 1" (Mondays 03:00)')
    serve.add_argument("--timezone", default="UTC", help="time zone of --cron (default: UTC)")
    serve.set_defaults(handler=serve_command)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub)
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    import yaml

    from medstack.config import ConfigError

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({exc})") from exc
    for flag, dotted in (("output_dir", "runtime.output_dir"), ("cache_dir", "runtime.cache_dir")):
        if getattr(args, flag, None):
            overrides[dotted] = getattr(args, flag)
    return overrides


def load_run_config(args: argparse.Namespace):
    """The validated config of ``--config`` with ``--set``/``--data``/dir flags applied; notes say what switched."""
    from medstack.config import load_config
    from medstack.console.datapath import fit_data_path

    overrides, notes = _overrides(args), []
    if args.data:
        overrides, notes = fit_data_path(args.config, args.data, overrides)
    cfg = load_config(args.config, overrides)
    if args.verbosity > QUIET:
        for note in notes:
            print(f"medstack: {note}", file=sys.stderr)
    return cfg


def check_config_command(args: argparse.Namespace) -> int:
    from medstack.config import config_to_yaml

    print(config_to_yaml(load_run_config(args)), end="")
    return 0


def serve_command(args: argparse.Namespace) -> int:
    cfg = load_run_config(args)
    from medstack.deploy import serve_config

    serve_config(cfg, name=args.name or cfg.name, cron=args.cron, timezone=args.timezone)
    return 0


def run_command(args: argparse.Namespace) -> int:
    cfg = load_run_config(args)
    from medstack.outputs import check_cache_dir, check_output_dir

    # Where the run will write, before a Prefect server starts: a folder that cannot be written fails in a moment, not
    # after a temporary server's start-up (the flow checks again, for runs that do not come through this command).
    check_output_dir(cfg.runtime.output_dir)
    check_cache_dir(cfg.runtime.cache_dir)
    from medstack.console.progress import RunProgress, parallelism
    from medstack.console.quiet import filtered_stderr, silence_prefect_console_at_exit, terminal_logging
    from medstack.console.runs import leaderboard_lines
    from medstack.flows.ensemble import ensemble_flow
    from medstack.progress import listening

    debug = errors.debug_enabled(args.debug)
    with contextlib.ExitStack() as stack:
        if args.verbosity < VERBOSE:
            stack.callback(silence_prefect_console_at_exit)  # registered after the server's own exit hook
            # Worker processes (processes and local Dask runners) configure Prefect's logging from the environment:
            # their console shows what ours would (warnings; -q: errors); their task runs still log in full to the API.
            os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING" if args.verbosity == NORMAL else "ERROR")
        # TensorFlow is imported by the first training, from a worker thread: its C++ start-up lines are filtered
        # out of file descriptor 2 for the whole run (not with --debug).
        terminal = sys.stderr if debug else stack.enter_context(filtered_stderr())
        progress = None
        if args.verbosity == NORMAL:
            live = sys.stdout.isatty() and terminal.isatty()
            workers, where = parallelism(cfg.runtime)
            progress = RunProgress(workers, live=live, stream=terminal, where=where)
        stack.enter_context(terminal_logging(args.verbosity, debug=debug, stream=terminal,
                                             on_line=progress.print_line if progress else None))
        if progress is not None:
            stack.enter_context(progress)
            stack.enter_context(listening(progress))  # the run's progress events, for this flow call only
        run_dir = ensemble_flow(config=cfg)
    if args.verbosity == QUIET:
        print(run_dir)  # -q: the run folder alone, for scripts
    else:
        print("\n".join(leaderboard_lines(Path(run_dir))))
        if cfg.registry.promote == "auto" and cfg.registry.backend == "mlflow":
            from medstack.tracking.registry import describe_promotion

            print(describe_promotion(run_dir, cfg))  # the alias, read back from the run's model version
        elif cfg.registry.promote == "auto":
            from medstack.inference.promotion import describe_auto_promotion

            print(describe_auto_promotion(run_dir, cfg))  # what the promotion did, and the file others will read
        print(f"run folder: {run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    quiet_environment()
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (Exception, KeyboardInterrupt) as exc:
        return errors.report(exc, debug=errors.debug_enabled(args.debug))


if __name__ == "__main__":
    raise SystemExit(main())
