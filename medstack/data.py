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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from medstack.config import DataConfig

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_MEDMNIST_KEYS = tuple(f"{split}_{kind}" for split in SPLIT_CODES for kind in ("images", "labels"))
_CHUNK = 1 << 20


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
        """sha256 of the content (pixels, shape, labels, class names, official split); computed once."""
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


def _fingerprint(ds: Dataset) -> str:
    # Name, sources and skipped are provenance, not content: the same pixels from another path hash the same.
    header = {
        "images": [list(ds.images.shape), str(ds.images.dtype)],
        "labels": [list(ds.labels.shape), str(ds.labels.dtype)],
        "class_names": list(ds.class_names),
        "official_split": None if ds.official_split is None else list(ds.official_split.shape),
    }
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(ds.images).data)
    digest.update(np.ascontiguousarray(ds.labels).data)
    if ds.official_split is not None:
        digest.update(np.ascontiguousarray(ds.official_split).data)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- dispatch


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load the dataset that ``cfg`` (the ``data`` section) describes."""
    class_names = tuple(cfg.class_names) if cfg.class_names else None
    if cfg.source == "digits":
        return load_digits_dataset(cfg.name, class_names=class_names)
    if cfg.source == "folder":
        return load_image_folder(cfg.path, cfg.image_size, cfg.channels, cfg.on_bad_image,
                                 name=cfg.name, class_names=class_names)
    if cfg.path:
        return load_npz(cfg.path, cfg.name, class_names)
    if cfg.name.lower() in KNOWN_DATASETS:
        return load_npz(fetch_known_dataset(cfg.name.lower()), cfg.name, class_names)
    raise DataError(f"data.path is not set and data.name {cfg.name!r} is not a downloadable dataset "
                    f"(known: {sorted(KNOWN_DATASETS)})")


# --------------------------------------------------------------------------------------------- npz


def load_npz(path: str | Path, name: str, class_names: tuple[str, ...] | list[str] | None = None) -> Dataset:
    """Load a MedMNIST npz (``{train,val,test}_{images,labels}``) or a plain npz (``images`` + ``labels``)."""
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
    return Dataset(name=name, images=np.concatenate(images), labels=all_labels, class_names=names,
                   official_split=official_split, sources=None)


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
) -> Dataset:
    """Load ``path/<class>/**/<image>``, resized to ``image_size`` (height, width) with ``channels`` (None = 3).

    Class names are the sorted top-level folder names; ``class_names`` may reorder them (same set required).
    """
    root = Path(path)
    if on_bad_image not in ("error", "skip"):
        raise DataError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    height, width = _check_image_size(image_size)
    mode = {1: "L", 3: "RGB", None: "RGB"}.get(channels)
    if mode is None:
        raise DataError(f"channels must be 1, 3 or None, got {channels!r}")
    files_by_class = _list_class_files(root, class_names)

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
    return Dataset(name=name or root.name, images=images[: len(labels)], labels=np.asarray(labels, np.int64),
                   class_names=tuple(files_by_class), official_split=None, sources=tuple(sources),
                   skipped=tuple(skipped))


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
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        request = urllib.request.Request(url, headers={"User-Agent": f"medstack/{_version()}"})
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            except OSError as exc:  # URLError, HTTPError, timeouts
                raise OSError(f"download of {url} failed: {exc}") from exc
        if digest.hexdigest() != md5.lower():
            raise DataError(f"download of {url}: md5 mismatch, expected {md5.lower()}, got {digest.hexdigest()}")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
