"""The in-memory :class:`Dataset` every loader returns, its checks and its content fingerprint.

A ``Dataset`` holds read-only views of its arrays, so its cached fingerprint cannot go stale. Bad input anywhere in
the data stage is a :class:`DataError` naming the file, key or class.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from medstack.errors import BAD_INPUT, MedstackError

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


class DataError(MedstackError, ValueError):
    """Bad input data; the message names the file, key or class."""

    exit_code, kind = BAD_INPUT, "data error"
    hint = "fix the data (or the data.* keys of the config) and run again"


@dataclass(frozen=True, eq=False)  # eq=False: identity equality/hash; comparing arrays field-wise is ambiguous
class Dataset:
    """Images and integer labels of one dataset, with its official split and provenance when known."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    official_split: np.ndarray | None
    sources: tuple[str, ...] | None
    skipped: tuple[tuple[str, str], ...] = ()
    groups: tuple[str, ...] | None = None  # group (patient) id of every image, from data.group_by
    grouped_by: str | None = None  # where the group ids came from, for the report

    def __post_init__(self) -> None:
        _check_dataset_arrays(self)
        for field_name in ("images", "labels", "official_split"):
            array = getattr(self, field_name)
            if array is not None:
                view = array.view()
                view.flags.writeable = False
                object.__setattr__(self, field_name, view)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """sha256 of the content (pixels, shape, labels, class names, official split, grouping); computed once."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            cached = _fingerprint(self)
            object.__setattr__(self, "_fingerprint", cached)
        return cached


def _check_dataset_arrays(ds: Dataset) -> None:
    images, labels = ds.images, ds.labels
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype != np.uint8:
        raise DataError(f"dataset {ds.name!r}: images must be a 4-D uint8 array (N, H, W, C), got "
                        f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}")
    if images.shape[-1] not in (1, 3):
        raise DataError(f"dataset {ds.name!r}: images must have 1 or 3 channels, got shape {images.shape}")
    n = len(images)
    if not isinstance(labels, np.ndarray) or labels.shape != (n,) or labels.dtype != np.int64:
        raise DataError(f"dataset {ds.name!r}: labels must be int64 of shape ({n},), got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)} {getattr(labels, 'shape', '')}")
    if not isinstance(ds.class_names, tuple) or not ds.class_names:
        raise DataError(f"dataset {ds.name!r}: class_names must be a non-empty tuple")
    if n and (labels.min() < 0 or labels.max() >= len(ds.class_names)):
        raise DataError(f"dataset {ds.name!r}: labels must lie in 0..{len(ds.class_names) - 1} "
                        f"for classes {list(ds.class_names)}, got {labels.min()}..{labels.max()}")
    split = ds.official_split
    if split is not None:
        if not isinstance(split, np.ndarray) or split.shape != (n,) or split.dtype != np.int8:
            raise DataError(f"dataset {ds.name!r}: official_split must be int8 of shape ({n},)")
        if n and not np.isin(split, (0, 1, 2)).all():
            raise DataError(f"dataset {ds.name!r}: official_split values must be 0 (train), 1 (val) or 2 (test)")
    if ds.sources is not None and len(ds.sources) != n:
        raise DataError(f"dataset {ds.name!r}: {len(ds.sources)} sources for {n} images")
    if ds.groups is not None:
        if not isinstance(ds.groups, tuple) or len(ds.groups) != n:
            raise DataError(f"dataset {ds.name!r}: groups must be a tuple of {n} group ids, got "
                            f"{len(ds.groups) if hasattr(ds.groups, '__len__') else type(ds.groups).__name__}")
        if not all(isinstance(g, str) and g for g in ds.groups):
            raise DataError(f"dataset {ds.name!r}: every group id must be a non-empty string")


def label_counts(labels: np.ndarray) -> dict[int, int]:
    """``{label: number of images}`` in label order."""
    values, counts = np.unique(labels, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def check_label_classes(where: Path | str, labels: np.ndarray, names: tuple[str, ...],
                        named_by: str | None = None) -> None:
    """Every class has images and there are at least two classes, or a DataError naming the labels found."""
    found = label_counts(labels)
    if len(found) < 2:
        raise DataError(f"{where}: every image has label {next(iter(found))} ({names[next(iter(found))]!r}); "
                        "a classifier needs at least two classes")
    empty = [i for i in range(len(names)) if i not in found]
    if empty:
        remap = "{" + ", ".join(f"{label}: {i}" for i, label in enumerate(found)) + "}"
        listed = ", ".join(f"{i} ({names[i]!r})" for i in empty)
        source = f"{named_by} {list(names)}" if named_by else f"labels 0..{len(names) - 1}"
        raise DataError(f"{where}: class(es) {listed} of {source} have no images; labels found (with counts): "
                        f"{found}. Labels must be class indices 0..K-1 with every class present: remap them "
                        f"(e.g. {remap}) or list only the classes present in data.class_names")


def _fingerprint(ds: Dataset) -> str:
    # Name, sources and skipped are provenance, not content: the same pixels from another path hash the same.
    # The grouping is content for splitting: which images belong together decides every split and fold. It is
    # hashed as a partition (ids renumbered in order of first appearance), so renaming patients changes nothing;
    # without groups the header is what it always was, so ungrouped fingerprints (and caches) stay valid.
    header = {
        "images": [list(ds.images.shape), str(ds.images.dtype)],
        "labels": [list(ds.labels.shape), str(ds.labels.dtype)],
        "class_names": list(ds.class_names),
        "official_split": None if ds.official_split is None else list(ds.official_split.shape),
    }
    if ds.groups is not None:
        header["groups"] = len(ds.groups)
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(ds.images).data)
    digest.update(np.ascontiguousarray(ds.labels).data)
    if ds.official_split is not None:
        digest.update(np.ascontiguousarray(ds.official_split).data)
    if ds.groups is not None:
        digest.update(partition_codes(ds.groups).tobytes())
    return digest.hexdigest()


def partition_codes(ids: Sequence[object]) -> np.ndarray:
    """int64 code of every id, numbered in order of first appearance: equal for any renaming of the ids."""
    _, first, inverse = np.unique(np.asarray(ids), return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[inverse.ravel()]
