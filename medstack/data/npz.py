"""MedMNIST-style npz files (``{train,val,test}_{images,labels}``) or plain ones (``images`` + ``labels``).

npz images keep their stored size; resizing happens in the model's input pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medstack.data.dataset import SPLIT_CODES, DataError, Dataset, check_label_classes, label_counts
from medstack.data.download import KNOWN_DATASETS
from medstack.data.groups import log_mixed_groups

_MEDMNIST_KEYS = tuple(f"{split}_{kind}" for split in SPLIT_CODES for kind in ("images", "labels"))


def load_npz(path: str | Path, name: str, class_names: tuple[str, ...] | list[str] | None = None,
             *, group_key: str | None = None) -> Dataset:
    """Load a MedMNIST npz (``{train,val,test}_{images,labels}``) or a plain npz (``images`` + ``labels``).

    With ``group_key``, group ids are read from ``<group_key>`` (plain) or ``{train,val,test}_<group_key>``
    (MedMNIST layout): one integer or string per image."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if keys & set(_MEDMNIST_KEYS):
                groups = [f"{split}_" for split in SPLIT_CODES]
            elif {"images", "labels"} & keys:
                groups = [""]
            else:
                groups = []
            if not groups:
                raise DataError(f"{path}: missing keys: expected 'images' + 'labels' or {list(_MEDMNIST_KEYS)}; "
                                f"the file has {sorted(keys)}")
            missing = [f"{g}{kind}" for g in groups for kind in ("images", "labels") if f"{g}{kind}" not in keys]
            if missing:
                raise DataError(f"{path}: missing keys {missing}; the file has {sorted(keys)}")
            parts = [(g, _read_npz_key(npz, path, f"{g}images"), _read_npz_key(npz, path, f"{g}labels"))
                     for g in groups]
            group_parts = None
            if group_key is not None:
                wanted = [f"{g}{group_key}" for g in groups]
                absent = [k for k in wanted if k not in keys]
                if absent:
                    raise DataError(f"{path}: missing group key(s) {absent} (data.group_by: npz_key, key "
                                    f"{group_key!r}); the file has {sorted(keys)}")
                group_parts = [(k, _read_npz_key(npz, path, k)) for k in wanted]
    except DataError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, OSError, pickle-refusal ValueError, ...
        raise DataError(f"{path}: cannot read as npz: {exc}") from exc

    images = _npz_images_to_uint8(path, [(f"{g}images", raw) for g, raw, _ in parts])
    labels = [_npz_labels(path, f"{g}labels", raw, len(img)) for (g, _, raw), img in zip(parts, images)]
    all_labels = np.concatenate(labels)
    if len(all_labels) == 0:
        raise DataError(f"{path}: contains no images")
    official_split = None
    if groups != [""]:
        official_split = np.concatenate(
            [np.full(len(lab), SPLIT_CODES[g.rstrip("_")], dtype=np.int8) for g, lab in zip(groups, labels)])
    names = _npz_class_names(path, name, class_names, all_labels)
    group_ids = None
    if group_parts is not None:
        group_ids = tuple(gid for (key, raw), lab in zip(group_parts, labels)
                          for gid in _npz_group_ids(path, key, raw, len(lab)))
        log_mixed_groups(path, group_ids, all_labels, names)
    return Dataset(name=name, images=np.concatenate(images), labels=all_labels, class_names=names,
                   official_split=official_split, sources=None, groups=group_ids,
                   grouped_by=None if group_key is None else f"npz key {group_key!r}")


def _npz_group_ids(path: Path, key: str, raw: np.ndarray, n_images: int) -> list[str]:
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1 or len(raw) != n_images:
        raise DataError(f"{path}: key {key!r} must hold one group id per image ({n_images},), got shape {raw.shape}")
    if raw.dtype.kind not in "iuUS":
        raise DataError(f"{path}: key {key!r} must hold integer or string group ids, got dtype {raw.dtype}")
    ids = [v.decode() if isinstance(v, bytes) else str(v) for v in raw.tolist()]
    empty = [i for i, v in enumerate(ids) if not v.strip()]
    if empty:
        raise DataError(f"{path}: key {key!r} has {len(empty)} empty group id(s), first at index {empty[0]}")
    return [v.strip() for v in ids]


def _read_npz_key(npz: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise DataError(f"{path}: key {key!r} cannot be read without pickle ({exc})") from exc


def _npz_images_to_uint8(path: Path, arrays: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
    """Validate rank/values and convert every image array to (N, H, W, C) uint8 with one shared scaling."""
    shaped = []
    for key, raw in arrays:
        if raw.ndim == 3:
            raw = raw[..., None]
        if raw.ndim != 4 or raw.shape[-1] not in (1, 3):
            raise DataError(f"{path}: key {key!r} must be (N, H, W) or (N, H, W, 1|3), got shape {raw.shape}")
        if not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)):
            raise DataError(f"{path}: key {key!r} has dtype {raw.dtype}; expected integer or float pixels")
        if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
            raise DataError(f"{path}: key {key!r} contains {int((~np.isfinite(raw)).sum())} NaN/inf pixel values")
        shaped.append((key, raw))
    first_key, first = shaped[0]
    for key, raw in shaped[1:]:
        if raw.shape[1:] != first.shape[1:]:
            raise DataError(f"{path}: key {key!r} has images of shape {raw.shape[1:]} but {first_key!r} has "
                            f"{first.shape[1:]}")
    floats = [raw for _, raw in shaped if np.issubdtype(raw.dtype, np.floating) and raw.size]
    # One scale for all splits, so a dark split cannot be mistaken for a [0, 1] one.
    float_max = max((float(raw.max()) for raw in floats), default=0.0)
    return [pixels_to_uint8(path, key, raw, unit_range=float_max <= 1.0) for key, raw in shaped]


def pixels_to_uint8(path: Path, key: str, raw: np.ndarray, unit_range: bool) -> np.ndarray:
    """The pixels of npz key ``key`` as uint8, as training stores them: uint8 as is, uint16 by its high byte, floats
    scaled from [0, 1] (``unit_range``) or taken as [0, 255] and rounded, integers 0..255; anything else is a
    :class:`DataError` naming the file and key. Prediction converts npz inputs with this same function."""
    if raw.dtype == np.uint8 or raw.size == 0:
        return raw.astype(np.uint8, copy=False)
    if raw.dtype == np.uint16:
        return (raw >> 8).astype(np.uint8)
    low, high = raw.min(), raw.max()
    if np.issubdtype(raw.dtype, np.floating):
        if low < 0 or high > 255:
            raise DataError(f"{path}: key {key!r} float pixels must lie in [0, 1] or [0, 255], got "
                            f"[{low:g}, {high:g}]")
        scaled = raw * 255.0 if unit_range else raw
        return np.rint(scaled).astype(np.uint8)
    if low < 0 or high > 255:
        raise DataError(f"{path}: key {key!r} integer pixels must lie in 0..255, got {low}..{high}")
    return raw.astype(np.uint8)


def _npz_labels(path: Path, key: str, raw: np.ndarray, n_images: int) -> np.ndarray:
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1:
        raise DataError(f"{path}: key {key!r} must be (N,) or (N, 1) class indices, got shape {raw.shape} "
                        "(multi-label data is not supported)")
    if len(raw) != n_images:
        raise DataError(f"{path}: key {key!r} has {len(raw)} labels but its images key has {n_images} images")
    if not np.issubdtype(raw.dtype, np.integer):
        raise DataError(f"{path}: key {key!r} must hold integer class indices, got dtype {raw.dtype}")
    if raw.size and raw.min() < 0:
        raise DataError(f"{path}: key {key!r} has negative labels (min {raw.min()})")
    return raw.astype(np.int64)


def _npz_class_names(path: Path, name: str, given: tuple[str, ...] | list[str] | None,
                     labels: np.ndarray) -> tuple[str, ...]:
    """Class names for ``labels``, checked at load time: every label a class, every class some images."""
    found = label_counts(labels)
    top = int(labels.max())
    if given:
        names = tuple(str(n) for n in given)
        if top >= len(names):
            raise DataError(f"{path}: label {top} found but only {len(names)} class names given {list(names)}: "
                            f"labels must be class indices 0..{len(names) - 1}; labels found (with counts): {found}")
    else:
        known = KNOWN_DATASETS.get(name.lower())
        if known is not None:
            names = known.class_names
            if top >= len(names):
                raise DataError(f"{path}: labels (with counts) {found} found, but data.name {name!r} has "
                                f"{len(names)} classes {list(names)} (labels 0..{len(names) - 1}); remap the "
                                "labels, or give data.class_names and a data.name of your own")
        else:
            names = tuple(f"class_{i}" for i in range(top + 1))
    check_label_classes(path, labels, names, named_by="data.class_names" if given else None)
    return names
