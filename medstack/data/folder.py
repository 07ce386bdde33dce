"""Image folders: ``<root>/<class>/**/<image>``, decoded, converted to ``channels`` and resized at load time.

* Folders are walked following symlinks; a directory reached twice (a symlink loop, or two links to the same
  folder, which would silently duplicate images) is an error naming both paths.
* Hidden files and folders (leading ``.``, e.g. ``.DS_Store`` or macOS ``._x.png`` resource forks) and files
  without an image extension are ignored.
* Group ids (``data.group_by``) are computed from the file list before any image is decoded, so a bad name fails
  fast.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from medstack.data.dataset import DataError, Dataset
from medstack.data.groups import assign_groups, check_breakhis_classes, log_mixed_groups
from medstack.data.images import IMAGE_EXTENSIONS, BadImage, decode_image

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
                pixels = decode_image(file, (height, width), mode)
            except BadImage as exc:
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
        log_mixed_groups(root, groups, np.asarray(labels, np.int64), tuple(files_by_class))
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
