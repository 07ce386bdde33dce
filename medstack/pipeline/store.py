"""The prepared dataset on disk, so tasks receive it by reference and never as a copy of the pixels.

``prepare_folds`` builds a :class:`PreparedData` in memory; :func:`store_prepared` writes it once under
``<cache_dir>/data/<fingerprint>/`` (content-addressed: the fingerprint covers the pixels, labels, splits and folds)
as ``.npy`` files plus ``meta.json``, and returns the same data opened from there (:class:`StoredData`) with every
array a read-only memory map. Pickling such an object (the processes and Dask task runners pickle every task's
parameters) carries only the folder path; unpickling reopens the memory maps, so each training process pages in the
rows it reads and the operating system shares those pages between processes on one machine.

On a cluster ``runtime.cache_dir`` must be a folder every worker sees at the same absolute path (NFS, a shared
volume): the path, not the data, travels with each task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medstack.pipeline.prepare import PreparedData, SealedLabels
from medstack.storage import atomic_directory, atomic_write_json

STORE_FORMAT = 1
_ARRAYS = ("images", "train_idx", "val_idx", "test_idx", "fold_of", "y_train", "y_val", "cal_idx", "y_cal")
_META = ("name", "class_names", "counts", "fingerprint", "positive_class", "duplicates", "grouping", "notes")


@dataclass(frozen=True)
class StoredData(PreparedData):
    """A :class:`PreparedData` opened from the store: its arrays are read-only memory maps, and it pickles as its
    folder path (a few hundred bytes, whatever the dataset's size), reopened wherever it is unpickled."""

    store: str = field(kw_only=True)

    def __reduce_ex__(self, protocol: int) -> tuple[Any, ...]:
        return open_prepared, (self.store,)


class StoreError(RuntimeError):
    """A stored dataset that is missing, incomplete or not the one its folder name promises."""


def store_folder(cache_dir: str | Path, fingerprint: str) -> Path:
    if not fingerprint or not all(c in "0123456789abcdef" for c in fingerprint):
        raise ValueError(f"dataset fingerprint must be lowercase hex, got {fingerprint!r}")
    return Path(cache_dir).expanduser().resolve() / "data" / fingerprint


def store_prepared(prepared: PreparedData, cache_dir: str | Path) -> StoredData:
    """Write ``prepared`` under the cache (unless this exact dataset is stored already) and return it opened from
    there, memory-mapped and read-only. The folder appears whole or not at all."""
    folder = store_folder(cache_dir, prepared.fingerprint)
    if not (folder / "meta.json").is_file():
        with atomic_directory(folder) as tmp:
            for name in _ARRAYS:
                np.save(tmp / f"{name}.npy", np.asarray(getattr(prepared, name)), allow_pickle=False)
            prepared.test_labels.save(tmp / "test_labels.npy")  # from seal to seal: no code here sees the values
            meta: dict[str, Any] = {name: getattr(prepared, name) for name in _META}
            atomic_write_json(tmp / "meta.json", {"format": STORE_FORMAT, **meta})
    return open_prepared(folder)


def open_prepared(folder: str | Path) -> StoredData:
    """The stored dataset in ``folder`` with every array memory-mapped read-only."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"no stored dataset in {folder} ({exc}); on a cluster, runtime.cache_dir must be a "
                         "folder every worker sees at the same path") from exc
    if meta.get("format") != STORE_FORMAT or meta.get("fingerprint") != folder.name:
        raise StoreError(f"{folder}: stored dataset format {meta.get('format')!r} with fingerprint "
                         f"{meta.get('fingerprint')!r} does not match its folder (format {STORE_FORMAT})")
    try:
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in _ARRAYS}
        test_labels = SealedLabels.load(folder / "test_labels.npy")
    except (OSError, ValueError) as exc:
        raise StoreError(f"{folder}: stored dataset is unreadable: {exc}") from exc
    return StoredData(
        name=meta["name"],
        class_names=tuple(meta["class_names"]),
        test_labels=test_labels,
        counts=meta["counts"],
        fingerprint=meta["fingerprint"],
        positive_class=meta["positive_class"],
        duplicates=meta["duplicates"],
        grouping=meta["grouping"],
        notes=tuple(meta["notes"]),
        store=str(folder),
        **arrays,
    )
