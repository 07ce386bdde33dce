"""Image folders: ``<root>/<class>/**/<image>``, decoded, converted to ``channels`` and resized at load time.

* Folders are walked following symlinks; a directory reached twice (a symlink loop, or two links to the same
  folder, which would silently duplicate images) is an error naming both paths.
* Hidden files and folders (leading ``.``, e.g. ``.DS_Store`` or macOS ``._x.png`` resource forks) and files
  without an image extension are ignored.
* Group ids (``data.group_by``) are computed from the file list before any image is decoded, so a bad name fails
  fast.
* Images are decoded in parallel (``medstack.data.parallel``) straight into one uint8 array backed by an unnamed
  temporary file (``medstack.data.scratch``): one copy of the pixels, which the OS may page, never a list of
  per-image arrays stacked into a second copy. Unreadable files skipped under ``on_bad_image: skip`` are closed up
  in place.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from medstack.data.dataset import DataError, Dataset
from medstack.data.groups import assign_groups, check_breakhis_classes, log_mixed_groups
from medstack.data.images import IMAGE_EXTENSIONS
from medstack.data.parallel import decode_into
from medstack.data.scratch import scratch_array

if TYPE_CHECKING:
    from medstack.config import GroupBy

log = logging.getLogger(__name__)


def load_image_folder(
    path: str | Path,
    image_size: tuple[int, int],
    channels: int | None,
    on_bad_image: Literal["error", "skip"] = "error",
    name: str | None = None,
    *,
    class_names: tuple[str, ...] | list[str] | None = None,
    group_by: GroupBy | None = None,
    workers: int | None = None,
) -> Dataset:
    """Load ``path/<class>/**/<image>``, resized to ``image_size`` (height, width) with ``channels`` (None = 3).

    Class names are the sorted top-level folder names; ``class_names`` may reorder them (same set required).
    ``group_by`` (a ``data.group_by`` spec) gives every image a group id, checked before any image is decoded.
    ``workers`` threads decode (default: the CPUs available, at most 8); the result does not depend on it.
    The images are a read-only view of one array backed by an unnamed temporary file (``$TMPDIR``).
    """
    root = Path(path)
    if on_bad_image not in ("error", "skip"):
        raise DataError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    height, width = _check_image_size(image_size)
    mode = {1: "L", 3: "RGB", None: "RGB"}.get(channels)
    if mode is None:
        raise DataError(f"channels must be 1, 3 or None, got {channels!r}")
    files_by_class = _list_class_files(root, class_names)
    all_files = [file for files in files_by_class.values() for file in files]
    group_ids, grouped_by = None, None
    if group_by is not None:
        group_ids, grouped_by = assign_groups(group_by, all_files, root)
        if group_by.kind == "breakhis":
            check_breakhis_classes(files_by_class)

    file_labels = np.repeat(np.arange(len(files_by_class), dtype=np.int64),
                            [len(files) for files in files_by_class.values()])
    # One uint8 array for the whole folder, file-backed so the OS may page it; decoded into in place, never stacked.
    images = scratch_array((len(all_files), height, width, 1 if mode == "L" else 3))
    bad = decode_into(images, all_files, (height, width), mode, workers=workers,
                      stop_at_first_bad=on_bad_image == "error")
    if bad and on_bad_image == "error":
        row, exc = bad[0]
        raise DataError(f"{all_files[row]}: unreadable image ({exc}); set data.on_bad_image: skip "
                        "to leave such files out") from exc
    kept = _drop_rows(images, [row for row, _ in bad])
    labels = file_labels[kept]
    sources = [str(all_files[row]) for row in kept]
    skipped = [(str(all_files[row]), str(exc)) for row, exc in bad]

    counts = np.bincount(labels, minlength=len(files_by_class))
    for class_name, count in zip(files_by_class, counts):
        if count == 0:
            raise DataError(f"{root / class_name}: every image of class {class_name!r} was skipped as unreadable")
    if skipped:
        log.warning("%s: skipped %d unreadable image(s), first: %s", root, len(skipped), skipped[0][0])
    groups = tuple(group_ids[row] for row in kept) if group_ids is not None else None
    if groups is not None:
        log_mixed_groups(root, groups, labels, tuple(files_by_class))
    return Dataset(name=name or root.name, images=images[: len(labels)], labels=labels,
                   class_names=tuple(files_by_class), official_split=None, sources=tuple(sources),
                   skipped=tuple(skipped), groups=groups, grouped_by=grouped_by)


def _drop_rows(images: np.ndarray, rows: list[int]) -> np.ndarray:
    """Move the rows not listed down over the listed ones, in place and in order; returns the kept row numbers."""
    keep = np.ones(len(images), dtype=bool)
    keep[rows] = False
    kept = np.flatnonzero(keep)
    for new, old in enumerate(kept.tolist()):
        if new != old:  # new < old, so every source row is read before anything overwrites it
            images[new] = images[old]
    return kept


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
        files = sorted(walk_images(root / class_name, visited), key=lambda p: p.as_posix())
        if not files:
            raise DataError(f"{root / class_name}: class {class_name!r} has no images "
                            f"(extensions {sorted(IMAGE_EXTENSIONS)})")
        files_by_class[class_name] = files
    return files_by_class


def walk_images(folder: Path, visited: dict[str, Path] | None = None) -> list[Path]:
    """Image files under ``folder`` (hidden files and folders skipped), following symlinks but refusing to enter any
    directory twice. ``visited`` (real path -> path as reached) carries that refusal across several walks, one per
    class folder; training and prediction list image folders with this one walk."""
    visited = {} if visited is None else visited
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
            files.extend(walk_images(entry_path, visited))
        elif entry.is_file() and entry_path.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(entry_path)
    return files
