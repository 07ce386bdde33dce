"""Loading image datasets into one in-memory :class:`Dataset`: MedMNIST-style npz, an image folder, digits.

This module is the I/O edge of the data stage. Everything downstream (splits, models, ensembles) works on the
arrays of a ``Dataset`` and never opens files. Bad input fails here with a :class:`DataError` naming the file,
key or class, so a broken dataset stops a run before any training starts.

Decisions worth knowing:

* npz images keep their stored size; resizing happens in the model's input pipeline. Folder images differ in
  size, so they are decoded, converted to ``channels`` and resized (bilinear) at load time.
* Image folders are walked following symlinks; a directory reached twice (a symlink loop, or two links to the
  same folder, which would silently duplicate images) is an error naming both paths.
* Hidden files and folders (leading ``.``, e.g. ``.DS_Store`` or macOS ``._x.png`` resource forks) and files
  without an image extension are ignored.
* 16-bit images are mapped to 8 bits by their nominal range (``value >> 8``), never clipped, so a 12-bit
  scan stored in 16 bits comes out dark rather than saturated.
* A ``Dataset`` holds read-only views of its arrays, so its cached fingerprint cannot go stale.
* Optional group ids (``data.group_by``: usually a patient) come from file names (the BreakHis pattern or a
  regex), a CSV, or an npz key. An image without a group id is an error naming the file, never its own group,
  since a silently ungrouped image is exactly the leak grouping exists to prevent. They are computed from the
  file list before any image is decoded, so a bad name fails fast.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np

from medstack.storage import atomic_file, sweep_stale_temporaries

if TYPE_CHECKING:
    from medstack.config import DataConfig, GroupBy

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_MEDMNIST_KEYS = tuple(f"{split}_{kind}" for split in SPLIT_CODES for kind in ("images", "labels"))
_CHUNK = 1 << 20
# BreakHis: SOB_<B|M>_<tumour type>-<patient/slide id>-<magnification>-<sequence>.png, e.g.
# SOB_B_A-14-22549AB-40-001.png is patient 14-22549AB. The id is everything between type and magnification.
BREAKHIS_NAME = "SOB_<B|M>_<type>-<patient>-<mag>-<seq>.png"
BREAKHIS_PATTERN = re.compile(
    r"SOB_(?P<tumour_class>[BM])_(?P<tumour_type>[A-Z]+)-(?P<group>\d+-[0-9A-Za-z]+)-(?P<magnification>\d+)"
    r"-(?P<seq>\d+)\.[A-Za-z]+"
)


class DataError(ValueError):
    """Bad input data; the message names the file, key or class."""


@dataclass(frozen=True)
class KnownDataset:
    """A dataset that can be downloaded by name."""

    url: str
    md5: str
    class_names: tuple[str, ...]
    filename: str


KNOWN_DATASETS: dict[str, KnownDataset] = {
    "pneumoniamnist": KnownDataset(
        url="https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1",
        md5="28209eda62fecd6e6a2d98b1501bb15f",
        class_names=("normal", "pneumonia"),
        filename="pneumoniamnist.npz",
    ),
}


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


# --------------------------------------------------------------------------------------------- dispatch


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load the dataset that ``cfg`` (the ``data`` section) describes."""
    class_names = tuple(cfg.class_names) if cfg.class_names else None
    if cfg.source == "digits":
        return load_digits_dataset(cfg.name, class_names=class_names)
    if cfg.source == "folder":
        return load_image_folder(cfg.path, cfg.image_size, cfg.channels, cfg.on_bad_image,
                                 name=cfg.name, class_names=class_names, group_by=cfg.group_by)
    group_key = cfg.group_by.key if cfg.group_by is not None and cfg.group_by.kind == "npz_key" else None
    if cfg.path:
        return load_npz(cfg.path, cfg.name, class_names, group_key=group_key)
    if cfg.name.lower() in KNOWN_DATASETS:
        return load_npz(fetch_known_dataset(cfg.name.lower()), cfg.name, class_names, group_key=group_key)
    raise DataError(f"data.path is not set and data.name {cfg.name!r} is not a downloadable dataset "
                    f"(known: {sorted(KNOWN_DATASETS)})")


# --------------------------------------------------------------------------------------------- npz


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
        _log_mixed_groups(path, group_ids, all_labels, names)
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
    return [_to_uint8(path, key, raw, unit_range=float_max <= 1.0) for key, raw in shaped]


def _to_uint8(path: Path, key: str, raw: np.ndarray, unit_range: bool) -> np.ndarray:
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
    top = int(labels.max())
    if given:
        names = tuple(str(n) for n in given)
        if top >= len(names):
            raise DataError(f"{path}: label {top} found but only {len(names)} class names given {list(names)}")
        return names
    known = KNOWN_DATASETS.get(name.lower())
    if known is not None and top < len(known.class_names):
        return known.class_names
    return tuple(f"class_{i}" for i in range(top + 1))


# --------------------------------------------------------------------------------------------- image folder


def load_image_folder(
    path: str | Path,
    image_size: tuple[int, int],
    channels: int | None,
    on_bad_image: Literal["error", "skip"] = "error",
    name: str | None = None,
    *,
    class_names: tuple[str, ...] | list[str] | None = None,
    group_by: GroupBy | None = None,
) -> Dataset:
    """Load ``path/<class>/**/<image>``, resized to ``image_size`` (height, width) with ``channels`` (None = 3).

    Class names are the sorted top-level folder names; ``class_names`` may reorder them (same set required).
    ``group_by`` (a ``data.group_by`` spec) gives every image a group id, checked before any image is decoded.
    """
    root = Path(path)
    if on_bad_image not in ("error", "skip"):
        raise DataError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    height, width = _check_image_size(image_size)
    mode = {1: "L", 3: "RGB", None: "RGB"}.get(channels)
    if mode is None:
        raise DataError(f"channels must be 1, 3 or None, got {channels!r}")
    files_by_class = _list_class_files(root, class_names)
    group_of, grouped_by = {}, None
    if group_by is not None:
        all_files = [file for files in files_by_class.values() for file in files]
        ids, grouped_by = assign_groups(group_by, all_files, root)
        group_of = dict(zip(all_files, ids))
        if group_by.kind == "breakhis":
            check_breakhis_classes(files_by_class)

    n_files = sum(len(files) for files in files_by_class.values())
    images = np.empty((n_files, height, width, 1 if mode == "L" else 3), dtype=np.uint8)
    labels, sources, skipped = [], [], []
    for label, (class_name, files) in enumerate(files_by_class.items()):
        for file in files:
            try:
                pixels = _decode_image(file, (height, width), mode)
            except _BadImage as exc:
                if on_bad_image == "error":
                    raise DataError(f"{file}: unreadable image ({exc}); set data.on_bad_image: skip "
                                    "to leave such files out") from exc
                skipped.append((str(file), str(exc)))
                continue
            images[len(labels)] = pixels.reshape(images.shape[1:])
            labels.append(label)
            sources.append(str(file))

    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(files_by_class))
    for class_name, count in zip(files_by_class, counts):
        if count == 0:
            raise DataError(f"{root / class_name}: every image of class {class_name!r} was skipped as unreadable")
    if skipped:
        log.warning("%s: skipped %d unreadable image(s), first: %s", root, len(skipped), skipped[0][0])
    groups = tuple(group_of[Path(src)] for src in sources) if group_by is not None else None
    if groups is not None:
        _log_mixed_groups(root, groups, np.asarray(labels, np.int64), tuple(files_by_class))
    return Dataset(name=name or root.name, images=images[: len(labels)], labels=np.asarray(labels, np.int64),
                   class_names=tuple(files_by_class), official_split=None, sources=tuple(sources),
                   skipped=tuple(skipped), groups=groups, grouped_by=grouped_by)


def _check_image_size(image_size: tuple[int, int] | None) -> tuple[int, int]:
    if image_size is None or len(image_size) != 2 or min(image_size) < 1:
        raise DataError(f"image_size must be (height, width) with positive sides, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def _list_class_files(root: Path, class_names: tuple[str, ...] | list[str] | None) -> dict[str, list[Path]]:
    """Sorted image files per class folder, in class order; errors name the offending path."""
    if not root.exists():
        raise DataError(f"image folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder with one sub-folder per class, found a file")
    found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise DataError(f"{root}: no class folders (expected one sub-folder per class, e.g. benign/, malignant/)")
    if len(found) < 2:
        raise DataError(f"{root}: only one class folder ({found[0]!r}); a classifier needs at least two")
    order = found
    if class_names:
        order = [str(c) for c in class_names]
        if sorted(order) != found:
            raise DataError(f"{root}: class_names {order} do not match the class folders {found}")
    visited: dict[str, Path] = {}
    files_by_class = {}
    for class_name in order:
        files = sorted(_walk_images(root / class_name, visited), key=lambda p: p.as_posix())
        if not files:
            raise DataError(f"{root / class_name}: class {class_name!r} has no images "
                            f"(extensions {sorted(IMAGE_EXTENSIONS)})")
        files_by_class[class_name] = files
    return files_by_class


def _walk_images(folder: Path, visited: dict[str, Path]) -> list[Path]:
    """Image files under ``folder``, following symlinks but refusing to enter any directory twice."""
    real = os.path.realpath(folder)
    if real in visited:
        raise DataError(f"{folder}: reached a folder twice via symlinks (also reached as {visited[real]}); "
                        "a symlink loop or a duplicate link would repeat images")
    visited[real] = folder
    files = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        entry_path = Path(entry.path)
        if entry.is_dir():  # follows symlinks
            files.extend(_walk_images(entry_path, visited))
        elif entry.is_file() and entry_path.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(entry_path)
    return files


class _BadImage(Exception):
    """An image file that cannot be decoded; the message is the reason."""


def _decode_image(file: Path, size: tuple[int, int], mode: str) -> np.ndarray:
    """Decode, convert to ``mode`` and resize (bilinear) one image; raises :class:`_BadImage`."""
    from PIL import Image

    try:
        with Image.open(file) as probe:
            probe.verify()
        with Image.open(file) as img:  # verify() leaves the image unusable, so reopen to decode
            img.load()
            img = _to_8bit(img)
            if img.mode == "P":
                img = img.convert("RGBA")  # palette transparency converts cleanly only via RGBA
            img = img.convert(mode).resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except _BadImage:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _BadImage(f"{type(exc).__name__}: {exc}") from exc


def _to_8bit(img: "Image.Image") -> "Image.Image":
    """Map 16/32-bit integer images to 8 bits by their nominal 16-bit range (>> 8), not by clipping."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise _BadImage(f"mode {img.mode} values {values.min()}..{values.max()} outside the 16-bit range")
        return Image.fromarray((values.astype(np.uint32) >> 8).astype(np.uint8), mode="L")
    if img.mode == "F":
        raise _BadImage("floating-point images (mode F) are not supported; save as 8- or 16-bit")
    return img


# --------------------------------------------------------------------------------------------- groups


def assign_groups(spec: GroupBy, files: Sequence[Path], root: str | Path) -> tuple[tuple[str, ...], str]:
    """Group id of every file (in order) under a folder ``data.group_by`` spec, and a one-line description of the
    rule for the report. A file without a group id is a :class:`DataError` naming it and the rule."""
    root = Path(root)
    if spec.kind == "breakhis":
        rule = f"the BreakHis pattern {BREAKHIS_NAME} (data.group_by: breakhis)"
        ids = group_ids_from_names(files, BREAKHIS_PATTERN, rule, fullmatch=True)
        return ids, f"BreakHis file names {BREAKHIS_NAME} (patient id)"
    if spec.kind == "filename_regex":
        where = "file name" if spec.match == "name" else f"path relative to {root}"
        rule = f"the regex {spec.pattern!r} (data.group_by: filename_regex, searched in the {where})"
        ids = group_ids_from_names(files, re.compile(spec.pattern), rule, root=root if spec.match != "name" else None)
        return ids, f"regex {spec.pattern} on the {where}"
    if spec.kind == "csv":
        mapping = read_group_csv(spec.path, spec.file_column, spec.group_column)
        ids = group_ids_from_csv(files, root, mapping, f"group_by csv {spec.path} (column {spec.file_column!r})")
        return ids, f"csv {spec.path} ({spec.file_column} -> {spec.group_column})"
    raise DataError(f"data.group_by kind {spec.kind!r} cannot group an image folder (use breakhis, "
                    "filename_regex or csv)")


def check_breakhis_classes(files_by_class: dict[str, Sequence[Path]]) -> None:
    """A BreakHis name states its class (``SOB_B_`` benign, ``SOB_M_`` malignant): when the class folders are named
    ``benign`` and ``malignant``, every file must sit in the folder its name states, or its label would be wrong
    without a word. With other class folders (e.g. the eight tumour types) there is nothing to compare."""
    folder_of = {name.lower(): name for name in files_by_class}
    if not {"benign", "malignant"} <= folder_of.keys():
        return
    stated = {"B": "benign", "M": "malignant"}
    wrong = []
    for folder in ("benign", "malignant"):
        for file in files_by_class[folder_of[folder]]:
            found = BREAKHIS_PATTERN.fullmatch(Path(file).name)
            if found and stated[found["tumour_class"]] != folder:
                wrong.append((Path(file), stated[found["tumour_class"]], folder_of[folder]))
    if wrong:
        file, says, folder = wrong[0]
        more = (f"; {len(wrong)} files disagree with their class folder, e.g. {[f.name for f, _, _ in wrong[:3]]}"
                if len(wrong) > 1 else "")
        raise DataError(f"{file}: its BreakHis name says {says} but it is in the class folder {folder!r}{more}. "
                        "Move it to the folder its name states, or fix the name")


def group_ids_from_names(files: Sequence[str | Path], pattern: re.Pattern[str], rule: str, *,
                         root: Path | None = None, fullmatch: bool = False) -> tuple[str, ...]:
    """The capture ``group`` (or the only capture group) of ``pattern`` in each file name, or in its path relative
    to ``root`` when given. Every file must match with a non-empty id; the error names the first few that do not."""
    which = "group" if "group" in pattern.groupindex else 1
    ids, unmatched = [], []
    for file in files:
        path = Path(file)
        text = path.relative_to(root).as_posix() if root is not None else path.name
        found = pattern.fullmatch(text) if fullmatch else pattern.search(text)
        group_id = found.group(which) if found else None
        if not group_id:
            unmatched.append(path)
        ids.append(group_id)
    if unmatched:
        first = unmatched[0]
        text = first.relative_to(root).as_posix() if root is not None else first.name
        more = (f"; {len(unmatched)} of {len(ids)} images have no group id, e.g. {[p.name for p in unmatched[:3]]}"
                if len(unmatched) > 1 else "")
        raise DataError(f"{first}: no group id: {text!r} does not match {rule}{more}. Every image needs one: an "
                        "image left in a group of its own could leak its patient across splits")
    return tuple(ids)


def read_group_csv(path: str | Path, file_column: str, group_column: str) -> dict[str, str]:
    """``{file: group id}`` from a CSV with a header row; ``\\`` in file paths read as ``/``, ``./`` dropped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"group_by csv not found: {path}")
    mapping: dict[str, str] = {}
    line_of: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            missing = [c for c in (file_column, group_column) if c not in columns]
            if missing:
                raise DataError(f"{path}: no column(s) {missing} (data.group_by file_column {file_column!r}, "
                                f"group_column {group_column!r}); the CSV has columns {columns}")
            for row in reader:
                file = (row.get(file_column) or "").strip().replace("\\", "/").removeprefix("./")
                group_id = (row.get(group_column) or "").strip()
                if not file and not group_id:
                    continue  # blank line
                if not file:
                    raise DataError(f"{path}: line {reader.line_num}: empty {file_column!r} (group {group_id!r})")
                if not group_id:
                    raise DataError(f"{path}: line {reader.line_num}: empty {group_column!r} for file {file!r}")
                if mapping.get(file, group_id) != group_id:
                    raise DataError(f"{path}: file {file!r} is listed with two groups: {mapping[file]!r} "
                                    f"(line {line_of[file]}) and {group_id!r} (line {reader.line_num})")
                mapping[file] = group_id
                line_of.setdefault(file, reader.line_num)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read as CSV: {exc}") from exc
    if not mapping:
        raise DataError(f"{path}: no rows (expected columns {file_column!r} and {group_column!r})")
    return mapping


def group_ids_from_csv(files: Sequence[str | Path], root: str | Path, mapping: dict[str, str],
                       what: str) -> tuple[str, ...]:
    """Group id of each file: looked up by its path relative to ``root``, else by its bare file name (which must
    then name one image only). A file found neither way is an error naming it and ``what`` (the CSV)."""
    root = Path(root)
    paths = [Path(f) for f in files]
    relative = [p.relative_to(root).as_posix() for p in paths]
    images_named: dict[str, list[str]] = {}
    for p, rel in zip(paths, relative):
        images_named.setdefault(p.name, []).append(rel)
    ids, missing = [], []
    for p, rel in zip(paths, relative):
        group_id = mapping.get(rel)
        if group_id is None and p.name in mapping:
            if len(images_named[p.name]) > 1:
                raise DataError(f"{what}: file name {p.name!r} matches {len(images_named[p.name])} images "
                                f"{images_named[p.name][:3]}; list paths relative to {root} instead")
            group_id = mapping[p.name]
        if group_id is None:
            missing.append(rel)
        ids.append(group_id)
    if missing:
        more = f"; {len(missing)} of {len(ids)} images are not listed, e.g. {missing[:3]}" if len(missing) > 1 else ""
        raise DataError(f"{root / missing[0]}: not listed in {what}, by its path {missing[0]!r} relative to {root} "
                        f"or by its file name{more}. Every image needs a group id")
    used = set(relative) | {p.name for p in paths}
    unused = [f for f in mapping if f not in used]
    if unused:
        log.info("%s: %d row(s) match no image (e.g. %s); ignored", what, len(unused), unused[:3])
    return tuple(ids)


def _log_mixed_groups(where: str | Path, groups: Sequence[str], labels: np.ndarray,
                      class_names: Sequence[str]) -> None:
    """A group with images in several classes is allowed (e.g. two tumour types of one patient), but said."""
    seen: dict[str, set[int]] = {}
    for group_id, label in zip(groups, labels.tolist()):
        seen.setdefault(group_id, set()).add(label)
    mixed = {g: sorted(class_names[c] for c in cs) for g, cs in seen.items() if len(cs) > 1}
    if mixed:
        log.warning("%s: %d group(s) have images in more than one class, e.g. %s", where, len(mixed),
                    dict(list(mixed.items())[:3]))


# --------------------------------------------------------------------------------------------- digits


def load_digits_dataset(name: str = "digits", class_names: tuple[str, ...] | None = None) -> Dataset:
    """scikit-learn's bundled 8x8 digits (offline), scaled from 0..16 to 0..255; ten classes '0'..'9'."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    names = tuple(class_names) if class_names else tuple(str(d) for d in range(10))
    if len(names) != 10:
        raise DataError(f"digits has 10 classes but {len(names)} class names were given: {list(names)}")
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return Dataset(name=name, images=images, labels=digits.target.astype(np.int64), class_names=names,
                   official_split=None, sources=None)


# --------------------------------------------------------------------------------------------- downloads


def default_data_dir() -> Path:
    """``$MEDSTACK_DATA_DIR``, else the user cache folder (platformdirs when installed) ``/medstack``."""
    env = os.environ.get("MEDSTACK_DATA_DIR")
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        return Path.home() / ".cache" / "medstack"
    return Path(user_cache_dir("medstack"))


def fetch_known_dataset(name: str, data_dir: Path | None = None, url: str | None = None,
                        md5: str | None = None) -> Path:
    """Path of a verified local copy of a known dataset, downloading it if absent or corrupt.

    ``url``/``md5`` override the registry (a mirror); with both given, ``name`` need not be known.
    """
    known = KNOWN_DATASETS.get(name.lower())
    if known is None and not (url and md5):
        raise DataError(f"unknown dataset {name!r}; downloadable: {sorted(KNOWN_DATASETS)} "
                        "(or pass url and md5)")
    url = url or known.url
    md5 = md5 or known.md5
    dest = Path(data_dir) if data_dir is not None else default_data_dir()
    dest = dest / (known.filename if known else f"{name}.npz")
    if dest.is_file():
        actual = _md5_file(dest)
        if actual == md5:
            return dest
        log.warning("%s: md5 %s, expected %s; downloading again", dest, actual, md5)
    return download_file(url, dest, md5)


def download_file(url: str, dest: Path, md5: str, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying ``md5``; a failed download leaves no file."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(dest.parent)  # what a killed download left
    digest = hashlib.md5(usedforsecurity=False)
    request = urllib.request.Request(url, headers={"User-Agent": f"medstack/{_version()}"})
    with atomic_file(dest, mode=0o644) as out:  # 0644: the data cache may be shared
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as exc:  # URLError, HTTPError, timeouts
            raise OSError(f"download of {url} failed: {exc}") from exc
        if digest.hexdigest() != md5.lower():
            raise DataError(f"download of {url}: md5 mismatch, expected {md5.lower()}, got {digest.hexdigest()}")
    log.info("downloaded %s to %s", url, dest)
    return dest


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _version() -> str:
    from medstack import __version__

    return __version__
