"""Writing a run folder: every file of ``runs/<run-id>/`` appears together or not at all.

The folder is assembled under a temporary name beside its final place and renamed when complete, so a
crash never leaves a half-written run that looks finished. Nothing is written outside the output folder: run ids
are plain folder names, the run folder must not exist (not even as a symlink), and it may hold no symlinks.

This module only writes: what goes in is composed beforehand (:func:`medstack.run_contents.compose_run`) and the
file names are :mod:`medstack.run_folder`'s.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from medstack.config import RunConfig, stable_hash
from medstack.errors import BAD_INPUT, MedstackError
from medstack.run_folder import (
    BUNDLE_FILE, CALIBRATION_PREDICTIONS_FILE, CONFIG_FILE, LEADERBOARD_FILE, MANIFEST_FILE, META_MODEL_FILE,
    METRICS_FILE, OOF_PREDICTIONS_FILE, PLOTS_DIR, REPORT_FILE, TEST_PREDICTIONS_FILE,
)
from medstack.storage import atomic_directory, atomic_write_json, atomic_write_text, sweep_stale_temporaries

if TYPE_CHECKING:
    import pandas as pd

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a plain folder name: no separators, no '..'


class OutputError(MedstackError, OSError):
    """The output folder cannot be created or written."""

    exit_code, kind = BAD_INPUT, "output error"
    hint = "choose a writable folder: --output-dir DIR (run folders) or --cache-dir DIR (fold cache)"


def new_run_id(cfg: RunConfig, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now()
    # Time for sorting, config hash for telling configs apart, a random tail so two runs in one second never collide.
    return f"{now:%Y%m%d-%H%M%S}-{stable_hash(cfg.model_dump(mode='json'))[:6]}-{uuid.uuid4().hex[:4]}"


def check_output_dir(path: str | Path) -> Path:
    """Resolve the output folder and make sure a run can be written there, before any training starts.

    Temporaries that killed runs left there are removed (never those of a run still writing)."""
    out = _writable_dir(path, "output dir")
    sweep_stale_temporaries(out)
    return out


def check_cache_dir(path: str | Path) -> Path:
    """The same for the fold cache: writable before any training, temporaries of killed writers removed."""
    from medstack.pipeline.fold_cache import FoldCache  # here, not above: the pipeline package loads scikit-learn

    root = _writable_dir(path, "cache dir")
    FoldCache(root).sweep()
    return root


def _writable_dir(path: str | Path, what: str) -> Path:
    out = Path(path).expanduser().resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what} {out} cannot be created: {exc.strerror}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {out} is not writable")
    return out


class _Saveable(Protocol):
    def save(self, path: Path) -> Any: ...


@dataclass(frozen=True)
class RunContents:
    """Everything a run folder holds, composed before anything is written."""

    metrics: dict[str, Any]
    leaderboard: pd.DataFrame  # indexed by model
    oof_predictions: pd.DataFrame
    test_predictions: pd.DataFrame
    fold_models: dict[str, Path]  # place in the run folder -> the cached .keras file linked (or copied) there
    meta_model: _Saveable  # saved by itself (joblib), as an export
    bundle: dict[str, Any]  # model.json
    report: str
    config: str  # config.yaml's text
    manifest: dict[str, Any]
    draw_plots: Callable[[Path], Any]  # draws the report's figures into the folder it is given
    calibration_predictions: pd.DataFrame | None = None  # the calibration slice's rows; None without a slice


def write_run(output_dir: Path, run_id: str, contents: RunContents) -> Path:
    """Write the complete run folder atomically; returns its final path."""
    if not RUN_ID.fullmatch(run_id):
        raise OutputError(f"run id {run_id!r} is not a plain folder name (letters, digits, '.', '_', '-')")
    final = check_output_dir(output_dir) / run_id
    if final.exists() or final.is_symlink():
        raise OutputError(f"run folder {final} already exists" + (" as a symlink" if final.is_symlink() else ""))
    with atomic_directory(final) as tmp:
        atomic_write_json(tmp / METRICS_FILE, contents.metrics)
        contents.leaderboard.to_csv(tmp / LEADERBOARD_FILE)
        contents.oof_predictions.to_csv(tmp / OOF_PREDICTIONS_FILE, index=False)
        contents.test_predictions.to_csv(tmp / TEST_PREDICTIONS_FILE, index=False)
        if contents.calibration_predictions is not None:
            contents.calibration_predictions.to_csv(tmp / CALIBRATION_PREDICTIONS_FILE, index=False)
        contents.draw_plots(tmp / PLOTS_DIR)
        _link_models(tmp, contents.fold_models)
        (tmp / META_MODEL_FILE).parent.mkdir(parents=True, exist_ok=True)
        contents.meta_model.save(tmp / META_MODEL_FILE)
        atomic_write_json(tmp / BUNDLE_FILE, contents.bundle)
        atomic_write_text(tmp / REPORT_FILE, contents.report)
        atomic_write_text(tmp / CONFIG_FILE, contents.config)
        atomic_write_json(tmp / MANIFEST_FILE, contents.manifest)
        _check_no_symlinks(tmp)
    return final


def _check_no_symlinks(root: Path) -> None:
    """Every path in the finished run folder is a plain file or folder inside it: nothing points elsewhere."""
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            if os.path.islink(os.path.join(folder, name)):
                rel = Path(folder, name).relative_to(root)
                raise OutputError(f"run folder would hold a symlink {rel} -> {os.readlink(Path(folder, name))}")


def _link_models(root: Path, fold_models: dict[str, Path]) -> None:
    for place, source in fold_models.items():
        target = root / place
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)  # cache and runs usually share a disk: no copy needed
        except OSError:
            shutil.copy2(source, target)
