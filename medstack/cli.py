"""``medstack`` console script: a thin entry over the Prefect flow."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from medstack.inference import cli as inference_cli


def _quiet_environment() -> None:
    # No outbound telemetry from Prefect, and TensorFlow's C++ start-up chatter kept out of the logs.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medstack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train the ensemble and write runs/<run-id>/")
    run.add_argument("--config", required=True, type=Path, help="YAML config, e.g. configs/smoke.yaml")
    run.add_argument("--data", help="override data.path (npz file or image folder)")
    run.add_argument("--output-dir", help="override runtime.output_dir (where run folders go)")
    run.add_argument("--cache-dir", help="override runtime.cache_dir (fold cache shared by runs)")
    serve = sub.add_parser(
        "serve", help="serve the flow as a Prefect deployment from this process (no work pool or worker needed)"
    )
    serve.add_argument("--config", required=True, type=Path)
    serve.add_argument("--name", help="deployment name (default: the config's name)")
    serve.add_argument("--cron", help='retrain schedule, e.g. "0 3 * * 1" (Mondays 03:00)')
    serve.add_argument("--timezone", default="UTC", help="time zone of --cron (default: UTC)")
    for command in (run, serve):
        command.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE",
            help="override one config field by dotted key, e.g. --set training.epochs=2 (value read as YAML)",
        )
    check = sub.add_parser("check-config", help="validate a config and print it resolved")
    check.add_argument("--config", required=True, type=Path)
    inference_cli.add_parsers(sub)
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    import yaml

    overrides = {}
    for item in getattr(args, "set", []):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"medstack: --set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    for flag, dotted in (("data", "data.path"), ("output_dir", "runtime.output_dir"), ("cache_dir", "runtime.cache_dir")):
        if getattr(args, flag, None):
            overrides[dotted] = getattr(args, flag)
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_environment()
    if args.command in inference_cli.COMMANDS:
        return inference_cli.run(args)
    from medstack.config import ConfigError, config_to_yaml, load_config

    try:
        cfg = load_config(args.config, _overrides(args))
    except ConfigError as exc:
        print(f"medstack: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(config_to_yaml(cfg), end="")
        return 0
    if args.command == "serve":
        from medstack.deploy import serve_config

        serve_config(cfg, name=args.name or cfg.name, cron=args.cron, timezone=args.timezone)
        return 0
    from medstack.flows.ensemble import ensemble_flow

    print(ensemble_flow(config=cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
