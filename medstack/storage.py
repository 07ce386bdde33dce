"""Atomic writes and the fold-result cache.

Every file a run or the cache leaves behind appears whole or not at all: it is written under a temporary
name in the same folder and renamed into place. A cache entry that fails to load is discarded with a warning
and recomputed by the caller.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; on success it is renamed to ``final``, on error removed.

    If ``final`` appears meanwhile (another process finished the same work), ours is dropped and theirs kept.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    history: dict[str, list[float]]
    info: dict[str, Any] = field(default_factory=dict)  # epochs run, best epoch, seconds, notes, resampling
    model_path: str = ""
    from_cache: bool = False


class FoldCache:
    """Content-addressed store of :class:`FoldResult` folders under ``<root>/folds/<key>/``."""

    _ARRAYS = ("oof_index", "oof_proba", "val_proba", "test_proba")

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def entry(self, key: str) -> Path:
        return self.root / "folds" / key

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
            if not model_path.is_file():
                raise FileNotFoundError(model_path)
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
        """Store ``result`` and its model (written by ``write_model(path)``) atomically; returns it with paths set."""
        entry = self.entry(result.cache_key)
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
                },
            )
        result.model_path = str(entry / "model.keras")
        return result
