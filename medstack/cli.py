"""``medstack`` console script: a thin entry over the Prefect flow."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


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
    check = sub.add_parser("check-config", help="validate a config and print it resolved")
    check.add_argument("--config", required=True, type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_environment()
    from medstack.config import ConfigError, config_to_yaml, load_config

    overrides = {}
    if getattr(args, "data", None):
        overrides["data.path"] = args.data
    if getattr(args, "output_dir", None):
        overrides["runtime.output_dir"] = args.output_dir
    if getattr(args, "cache_dir", None):
        overrides["runtime.cache_dir"] = args.cache_dir
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"medstack: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(config_to_yaml(cfg), end="")
        return 0
    from flows.ensemble import with_runtime

    run_dir = with_runtime(cfg.runtime)(config=cfg)
    print(run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
