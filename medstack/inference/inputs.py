"""What ``medstack predict`` reads: an image file, a folder (recursive), an npz, or a CSV of paths, in batches.

Image files go through :func:`medstack.data.images.decode_image`, the decoding training used, so a file predicts
exactly as it would have trained. npz images keep their stored size (the model resizes) and are read in chunks
straight from the archive, so memory stays bounded however many rows it holds.
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from medstack.data.dataset import SPLIT_CODES, DataError
from medstack.data.images import IMAGE_EXTENSIONS, BadImage, decode_image
from medstack.errors import UsageError
from medstack.inference.stats import pixel_warnings, source_warnings

_COLOUR_PROBE = 64  # colour check on a thumbnail of at most this side: cheap, and enough to tell grey from colour


class InputError(UsageError, ValueError):
    """Input that cannot be predicted; the message names the file."""


@dataclass
class Batch:
    ids: list[str]
    images: np.ndarray  # (n, H, W, C) uint8
    warnings: list[list[tuple[str, str]]]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)


def list_inputs(path: str | Path) -> tuple[str, list[Path] | tuple[Path, list[str]]]:
    """The kind of input and what it holds: ('files', [paths]) or ('npz', (path, [keys]))."""
    path = Path(path).expanduser()
    if path.is_dir():
        from medstack.data.folder import walk_images  # the training walk: hidden files skipped, loops refused

        try:
            files = sorted(walk_images(path), key=lambda p: p.as_posix())
        except DataError as exc:
            raise InputError(str(exc)) from exc
        if not files:
            raise InputError(f"{path}: no image files (extensions {sorted(IMAGE_EXTENSIONS)})")
        return "files", files
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz", (path, _npz_image_keys(path))
    if suffix == ".csv":
        return "files", _csv_paths(path)
    if suffix in IMAGE_EXTENSIONS:
        return "files", [path]
    raise InputError(f"{path}: not an image ({sorted(IMAGE_EXTENSIONS)}), folder, .npz or .csv of paths")


def count_inputs(listing: tuple[str, object]) -> int:
    kind, content = listing
    if kind == "files":
        return len(content)
    path, keys = content
    with np.load(path, allow_pickle=False) as npz:
        return sum(_npy_header(npz.zip, key)[0][0] for key in keys)


def iter_batches(listing: tuple[str, object], shape: tuple[int, int, int], stats: dict, batch_size: int,
                 on_bad_image: str = "error") -> Iterator[Batch]:
    if on_bad_image not in ("error", "skip"):
        raise InputError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    kind, content = listing
    if kind == "files":
        yield from _file_batches(content, shape, stats, batch_size, on_bad_image)
    else:
        yield from _npz_batches(*content, shape, stats, batch_size)


def _file_batches(files: list[Path], shape, stats, batch_size, on_bad_image) -> Iterator[Batch]:
    mode = "L" if shape[-1] == 1 else "RGB"
    for start in range(0, len(files), batch_size):
        ids, images, warnings, skipped = [], [], [], []
        for file in files[start : start + batch_size]:
            try:
                if not file.is_file():
                    raise BadImage("file not found")
                pixels = decode_image(file, shape[:2], mode).reshape(shape)
            except BadImage as exc:
                if on_bad_image == "error":
                    raise InputError(f"{file}: unreadable image ({exc}); use --on-bad-image skip to leave such "
                                     "files out") from exc
                skipped.append((str(file), str(exc)))
                continue
            ids.append(str(file))
            images.append(pixels)
            warnings.append(probe_warnings(file, stats))
        x = np.stack(images) if images else np.zeros((0, *shape), np.uint8)
        for found, more in zip(warnings, pixel_warnings(x, stats)):
            found.extend(more)
        yield Batch(ids, x, warnings, skipped)


def probe_warnings(file: Path | BinaryIO, stats: dict) -> list[tuple[str, str]]:
    """Warnings from the file as stored (before decoding converts it): mode, size, real colour."""
    from PIL import Image

    try:
        with Image.open(file) as img:
            colour = None
            if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
                thumb = img.convert("RGB")
                thumb.thumbnail((_COLOUR_PROBE, _COLOUR_PROBE))
                rgb = np.asarray(thumb, np.int16)
                colour = bool(max(np.abs(rgb[..., 0] - rgb[..., 1]).max(), np.abs(rgb[..., 1] - rgb[..., 2]).max())
                              > 12)
            return source_warnings(img.mode, img.size, colour, stats)
    except Exception:  # decode_image already accepted the file; a failed probe only means no source warnings
        return []


def _csv_paths(path: Path) -> list[Path]:
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read as CSV: {exc}") from exc
    if not rows:
        raise InputError(f"{path}: empty CSV (expected a column 'path' of image files)")
    header = [h.strip().lower() for h in rows[0]]
    column = next((header.index(c) for c in ("path", "file", "filename", "image") if c in header), None)
    if column is None:
        if len(header) == 1 and Path(rows[0][0]).suffix.lower() in IMAGE_EXTENSIONS:
            column, body = 0, rows  # a bare list of paths without a header
        else:
            raise InputError(f"{path}: no column named path, file, filename or image; columns: {rows[0]}")
    else:
        body = rows[1:]
    out = []
    for line, row in enumerate(body, start=2 if body is not rows else 1):
        if len(row) <= column or not row[column].strip():
            raise InputError(f"{path}: line {line} has no path")
        file = Path(row[column].strip()).expanduser()
        out.append(file if file.is_absolute() else path.parent / file)  # relative to the CSV's folder
    if not out:
        raise InputError(f"{path}: lists no image paths")
    return out


def _npz_image_keys(path: Path) -> list[str]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
    except Exception as exc:
        raise InputError(f"{path}: cannot read as npz: {exc}") from exc
    if "images" in keys:
        return ["images"]
    medmnist = [f"{split}_images" for split in SPLIT_CODES if f"{split}_images" in keys]
    if medmnist:
        return medmnist  # train, val, test in order: rows number as medstack.data.npz.load_npz numbers them
    raise InputError(f"{path}: no 'images' key (or MedMNIST {{train,val,test}}_images); the file has {sorted(keys)}")


def _npy_header(archive: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    with archive.open(f"{key}.npy") as raw:
        shape, fortran, dtype = _read_header(raw)
    return shape, dtype, fortran


def _read_header(raw) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(raw)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(raw)
    return np.lib.format.read_array_header_2_0(raw)


def _npz_batches(path: Path, keys: list[str], shape, stats, batch_size) -> Iterator[Batch]:
    from medstack.data.npz import pixels_to_uint8  # the training conversion of npz pixel values to uint8

    with np.load(path, allow_pickle=False) as npz:
        headers = {key: _npy_header(npz.zip, key) for key in keys}
        for key, (stored, dtype, fortran) in headers.items():
            dims = stored + (1,) if len(stored) == 3 else stored
            if fortran or len(dims) != 4 or tuple(dims[1:]) != tuple(shape) or dtype.hasobject:
                raise InputError(f"{path}: key {key!r} holds {dtype} images of shape {stored}; the model takes "
                                 f"(N, {shape[0]}, {shape[1]}, {shape[2]}) pixel arrays (save other sizes as image "
                                 "files: those are resized as in training)")
        floats = [k for k, (_, dtype, _) in headers.items() if np.issubdtype(dtype, np.floating)]
        unit_range = bool(floats) and max(_chunked_max(npz.zip, k, headers[k], batch_size) for k in floats) <= 1.0
        row = 0
        for key, (stored, dtype, _) in headers.items():
            for chunk in _chunks(npz.zip, key, stored, dtype, batch_size):
                try:
                    x = pixels_to_uint8(path, key, chunk, unit_range).reshape((-1, *shape))
                except DataError as exc:
                    raise InputError(str(exc)) from exc
                ids = [f"{path}:{r}" for r in range(row, row + len(x))]
                row += len(x)
                yield Batch(ids, x, pixel_warnings(x, stats))


def _chunks(archive: zipfile.ZipFile, key: str, stored, dtype: np.dtype, batch_size: int) -> Iterator[np.ndarray]:
    per_row = int(np.prod(stored[1:])) * dtype.itemsize
    with archive.open(f"{key}.npy") as raw:
        _read_header(raw)
        for start in range(0, stored[0], batch_size):
            n = min(batch_size, stored[0] - start)
            data = raw.read(n * per_row)
            yield np.frombuffer(data, dtype=dtype).reshape((n, *stored[1:]))


def _chunked_max(archive: zipfile.ZipFile, key: str, header, batch_size: int) -> float:
    stored, dtype, _ = header
    return max((float(c.max()) for c in _chunks(archive, key, stored, dtype, batch_size) if c.size), default=0.0)
