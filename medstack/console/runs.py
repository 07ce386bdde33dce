"""``medstack runs`` (past run folders) and ``medstack compare RUN_A RUN_B`` (metric differences, with a paired
bootstrap interval for ROC AUC when both runs scored the same test images), read-only.

A run folder is listed from its manifest, metrics and config; folders still being written (temporary names) and
folders without a manifest are not runs. Files, readers and the rules (the recommended model, the positive class,
the headline metrics, the paired comparison) come from :mod:`medstack.run_folder` and :mod:`medstack.run_comparison`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medstack.run_folder import (
    HEADLINE_METRICS, RECOMMENDED, RunFolderError, has_metrics, is_run_folder, read_config_tree, read_manifest,
    read_metrics, run_recommendation,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from medstack.console.flags import add_common_flags

    runs = sub.add_parser("runs", help="list past runs (id, config, date, data, recommended model)")
    add_common_flags(runs)
    runs.add_argument("--output-dir", default="runs", type=Path, help="where run folders are (default: runs)")
    runs.set_defaults(handler=list_runs_command)
    compare = sub.add_parser("compare", help="metric differences of the same models in two runs")
    add_common_flags(compare)
    compare.add_argument("run_a", help="run id (in --output-dir) or run folder")
    compare.add_argument("run_b", help="run id (in --output-dir) or run folder")
    compare.add_argument("--output-dir", default="runs", type=Path, help="where run ids are looked up (default: runs)")
    compare.set_defaults(handler=compare_command)


def _bad_input(message: str) -> Exception:
    from medstack.config import ConfigError  # imported here: `medstack --help` stays free of pydantic and numpy

    return ConfigError(message)


def _read(reader: Callable[[Path], dict[str, Any]], run_dir: Path) -> dict[str, Any]:
    """A run file through its reader; one that cannot be read is bad input (exit 2), named in the message."""
    try:
        return reader(run_dir)
    except RunFolderError as exc:
        raise _bad_input(str(exc)) from exc


def _auc_with_ci(model: dict[str, Any]) -> str:
    auc = model.get("test", {}).get("roc_auc")
    if not isinstance(auc, (int, float)):
        return "n/a"
    ci = model.get("test_ci", {}).get("roc_auc")
    return f"{auc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, list) and len(ci) == 2 else f"{auc:.3f}"


def run_row(run_dir: Path) -> dict[str, str]:
    manifest = _read(read_manifest, run_dir)
    metrics = _read(read_metrics, run_dir) if has_metrics(run_dir) else {}
    model, why = run_recommendation(metrics)
    created = manifest.get("created", "")
    try:
        created = dt.datetime.fromisoformat(created).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        pass
    wall = manifest.get("wall_seconds")
    return {
        "run": run_dir.name,
        "config": _config_name(run_dir),
        "date": created,
        "data": str(manifest.get("data_fingerprint", ""))[:12],
        "model": f"{model} ({why})" if model else "n/a",
        "test AUC": _auc_with_ci(metrics["models"][model]) if model else "n/a",
        "wall": _duration(wall) if isinstance(wall, (int, float)) else "n/a",
    }


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _run_config(run_dir: Path) -> dict[str, Any]:
    try:
        return read_config_tree(run_dir)
    except RunFolderError:  # shown as "?": the listing does not stop for one unreadable config
        return {}


def _config_name(run_dir: Path) -> str:
    return str(_run_config(run_dir).get("name", "?"))


def _ci_level(run_dir: Path) -> str:
    level = (_run_config(run_dir).get("report") or {}).get("ci")
    return f"{level:.0%}" if isinstance(level, float) else "bootstrap"


def find_runs(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        raise _bad_input(f"no run folder at {output_dir} (give the folder runs were written to with --output-dir)")
    return sorted((p for p in output_dir.iterdir() if is_run_folder(p)), key=lambda p: p.name)


def list_runs_command(args: argparse.Namespace) -> int:
    runs = find_runs(args.output_dir)
    if not runs:
        print(f"no runs in {args.output_dir}", file=sys.stderr)
        return 0
    rows = [run_row(run) for run in runs]
    _print_table(list(rows[0]), [list(r.values()) for r in rows], title=f"{len(rows)} run(s) in {args.output_dir}")
    return 0


def resolve_run(ref: str, output_dir: Path) -> Path:
    for candidate in (Path(ref), output_dir / ref):
        if has_metrics(candidate):
            return candidate
    matches = [p for p in find_runs(output_dir) if p.name.startswith(ref)] if output_dir.is_dir() else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise _bad_input(f"run {ref!r} is ambiguous in {output_dir}: {[p.name for p in matches]}")
    raise _bad_input(f"run {ref!r} not found: neither a run folder nor a run id in {output_dir}")


def compare_rows(a: dict[str, Any], b: dict[str, Any], paired: dict[str, tuple[float, float]] | None = None
                 ) -> tuple[list[str], list[list[str]]]:
    """One row per model the two runs share and metric: A, B, B - A, and for ROC AUC the paired interval of B - A
    when ``paired`` has one for the model."""
    models_a, models_b = a.get("models", {}), b.get("models", {})
    shared = [m for m in models_a if m in models_b]
    paired = paired or {}
    rows = []
    for model in shared:
        for metric in HEADLINE_METRICS:
            va, vb = models_a[model].get("test", {}).get(metric), models_b[model].get("test", {}).get(metric)
            if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
                interval = paired.get(model) if metric == "roc_auc" else None
                rows.append([model, metric, f"{va:.3f}", f"{vb:.3f}", f"{vb - va:+.3f}",
                             f"{interval[0]:+.3f} to {interval[1]:+.3f}" if interval else ""])
    return shared, rows


def paired_roc_auc(dir_a: Path, dir_b: Path, models: list[str]) -> dict[str, tuple[float, float]]:
    """{model: 95% paired bootstrap interval of B's test ROC AUC minus A's}, both scored on the same resampled test
    images; empty when the runs did not score the same test rows with the same labels."""
    from medstack.run_comparison import shared_test

    try:
        shared = shared_test(dir_a, dir_b)
    except (OSError, ValueError, KeyError):
        return {}
    if shared is None:
        return {}
    pairs = {m: shared.roc_auc_difference(m, m) for m in models if m in shared.a and m in shared.b}
    return {model: pair["ci"] for model, pair in pairs.items() if pair is not None}


def compare_command(args: argparse.Namespace) -> int:
    dir_a, dir_b = resolve_run(args.run_a, args.output_dir), resolve_run(args.run_b, args.output_dir)
    a, b = _read(read_metrics, dir_a), _read(read_metrics, dir_b)
    fp_a, fp_b = (_read(read_manifest, d).get("data_fingerprint") for d in (dir_a, dir_b))
    shared = [m for m in a.get("models", {}) if m in b.get("models", {})]
    if not shared:
        raise _bad_input(f"{dir_a.name} and {dir_b.name} share no model; nothing to compare")
    paired = paired_roc_auc(dir_a, dir_b, shared) if fp_a == fp_b else {}
    _, rows = compare_rows(a, b, paired)
    only = sorted(set(a.get("models", {})) ^ set(b.get("models", {})))
    title = f"test metrics, A = {dir_a.name}, B = {dir_b.name}"
    _print_table(["model", "metric", "A", "B", "B - A", "B - A, 95% paired"], rows, title=title)
    if paired:
        from medstack.models.metrics import PAIRED_RESAMPLES

        print(f"paired: each ROC AUC difference bootstrapped over the same resampled test images ({PAIRED_RESAMPLES} "
              "resamples); an interval that holds 0 is a difference these test images cannot show")
    elif fp_a == fp_b:
        print("note: no paired interval: the runs' test predictions are missing or are not of the same test images")
    if fp_a != fp_b:
        print("note: the two runs saw different data (data fingerprints differ); differences mix data and model")
    if only:
        print(f"note: in one run only, not compared: {', '.join(only)}")
    return 0


def leaderboard_lines(run_dir: Path, top: int = 3) -> list[str]:
    """A short leaderboard of a finished run: the top models by test ROC AUC with their CI, and the pick."""
    metrics = _read(read_metrics, run_dir)
    models = metrics.get("models", {})
    ranked = sorted(models, key=lambda m: -(models[m].get("test", {}).get("roc_auc") or float("-inf")))
    lines = [f"test ROC AUC ({_ci_level(run_dir)} CI):"] + [f"  {name:<14} {_auc_with_ci(models[name])}" for name in ranked[:top]]
    model, why = run_recommendation(metrics)
    if model:
        reason = metrics.get("recommended", {}).get("reason") if why == RECOMMENDED else None
        lines.append(f"recommended: {model}" + (f" ({reason})" if reason else f" ({why}; see report.md)"))
    from medstack.report_student import student_line  # numpy (report_text): only after a run

    student = student_line(metrics)
    return lines + ([student] if student else [])


def _print_table(header: list[str], rows: list[list[str]], title: str) -> None:
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(*header, title=title, title_justify="left")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    print(title)
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
