"""The fold cache: what one (strategy, fold) training leaves, stored content-addressed and shared by runs.

An entry is ``<cache>/folds/<key>/`` holding ``model.keras``, ``predictions.npz`` (the held-out fold's rows and
the OOF, val, test and calibration-slice probabilities) and ``meta.json`` (format, strategy, fold, history, info, writer). It is
written atomically (:func:`medstack.storage.atomic_directory`); an entry that fails to load is discarded with a
warning and the caller trains the fold again. The key is :func:`medstack.pipeline.train.fold_cache_key`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medstack.storage import STALE_AFTER_S, atomic_directory, atomic_write_json, sweep_stale_temporaries

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: cal_proba, the calibration slice's probabilities
CACHE_KEY = re.compile(r"[0-9a-f]{16,64}")


@dataclass
class FoldResult:
    """What one (strategy, fold) training leaves: small arrays, its history and where its model lives."""

    strategy: str
    fold: int
    cache_key: str
    oof_index: np.ndarray  # dataset rows of the held-out fold
    oof_proba: np.ndarray  # (len(oof_index), K)
    val_proba: np.ndarray
    test_proba: np.ndarray
    cal_proba: np.ndarray  # (len(cal_idx), K): the calibration slice, predicted like test
    history: dict[str, list[float]]
    info: dict[str, Any] = field(default_factory=dict)  # epochs run, best epoch, seconds, notes, resampling
    model_path: str = ""
    from_cache: bool = False


class FoldCache:
    """Content-addressed store of :class:`FoldResult` folders under ``<root>/folds/<key>/``."""

    _ARRAYS = ("oof_index", "oof_proba", "val_proba", "test_proba", "cal_proba")

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def entry(self, key: str) -> Path:
        if not CACHE_KEY.fullmatch(key):  # keys become folder names: hex only, never a path
            raise ValueError(f"cache key must be 16-64 lowercase hex digits, got {key!r}")
        return self.root / "folds" / key

    def sweep(self, max_age_s: float = STALE_AFTER_S) -> list[Path]:
        """Remove temporaries that killed writers left in the cache (see :func:`sweep_stale_temporaries`)."""
        return sweep_stale_temporaries(self.root / "folds", max_age_s)

    def load(self, key: str) -> FoldResult | None:
        """The cached result for ``key``, or ``None`` (absent, or broken and therefore discarded)."""
        entry = self.entry(key)
        if not entry.is_dir():
            return None
        try:
            meta = json.loads((entry / "meta.json").read_text())
            if meta.get("format") != CACHE_FORMAT:
                raise ValueError(f"cache format {meta.get('format')!r}, expected {CACHE_FORMAT}")
            with np.load(entry / "predictions.npz", allow_pickle=False) as arrays:
                loaded = {name: arrays[name] for name in self._ARRAYS}
            model_path = entry / "model.keras"
            for path in entry.iterdir():
                if path.is_symlink():  # would be copied into run folders: what it points to is not ours
                    raise ValueError(f"{path.name} is a symlink")
            if not zipfile.is_zipfile(model_path):  # absent, or cut short (.keras files are zip archives)
                raise ValueError(f"{model_path.name} is missing or not a whole .keras archive")
        except Exception as exc:  # any unreadable entry is recomputed, never trusted
            log.warning("discarding broken cache entry %s: %s", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return FoldResult(
            strategy=meta["strategy"],
            fold=meta["fold"],
            cache_key=key,
            history=meta["history"],
            info=meta["info"],
            model_path=str(model_path),
            from_cache=True,
            **loaded,
        )

    def save(self, result: FoldResult, write_model: Callable[[Path], None]) -> FoldResult:
        """Store ``result`` and its model (written by ``write_model(path)``) atomically; returns it with paths set.

        When another run stored the same key first (two runs of one config at once), its entry is kept and its
        result returned instead of ``result``, so the predictions a run reports always belong to the model it
        copies into its run folder.
        """
        entry = self.entry(result.cache_key)
        for _ in range(2):
            writer = uuid.uuid4().hex
            with atomic_directory(entry) as tmp:
                write_model(tmp / "model.keras")
                np.savez(tmp / "predictions.npz", **{name: getattr(result, name) for name in self._ARRAYS})
                atomic_write_json(
                    tmp / "meta.json",
                    {
                        "format": CACHE_FORMAT,
                        "strategy": result.strategy,
                        "fold": result.fold,
                        "history": result.history,
                        "info": result.info,
                        "writer": writer,
                    },
                )
            if self._writer(entry) == writer:
                result.model_path = str(entry / "model.keras")
                return result
            theirs = self.load(result.cache_key)
            if theirs is not None:
                log.info("%s: stored first by another run; using its result", entry)
                note = "trained at the same time by another run, which stored it first: its result is used"
                theirs.info = {**theirs.info, "notes": [*theirs.info.get("notes", []), note]}
                theirs.from_cache = False  # this run did train it
                return theirs
            # theirs was broken and has just been discarded: store ours after all
        raise OSError(f"{entry}: could not store the cache entry (replaced by broken entries twice)")

    @staticmethod
    def _writer(entry: Path) -> str | None:
        try:
            return json.loads((entry / "meta.json").read_text()).get("writer")
        except (OSError, ValueError):
            return None
