"""What ``medstack evaluate`` reads: labelled images, an npz with labels or an image folder with class sub-folders.

The images stream through prediction's reader (:func:`medstack.inference.inputs.iter_batches`: the decoding training
used, npz read chunk by chunk, the drift guard's warnings); this module adds the labels and matches the data's
classes to the bundle's **by name**, before any image is decoded:

* an npz holds ``images`` + ``labels`` (or MedMNIST ``{train,val,test}_{images,labels}``, rows in that order) and
  names its classes in a ``class_names`` key (strings, label i is ``class_names[i]``) or through ``--class-names``;
* an image folder holds one sub-folder per class (``<root>/<class>/**/<image>``), walked as training walks it.

The data's classes must be the bundle's, in any order; labels are renumbered to the bundle's order. Every problem
is an :class:`EvaluationError` (exit 2) naming the file and, for classes, both lists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from medstack.data.dataset import DataError
from medstack.data.images import IMAGE_EXTENSIONS
from medstack.errors import UsageError

CLASS_NAMES_KEY = "class_names"
_UNLABELLED_HINT = ("evaluate needs labelled images: an npz with 'labels' (or MedMNIST {train,val,test}_labels) "
                    "or a folder with one sub-folder per class; score unlabelled images with medstack predict")


class EvaluationError(UsageError, ValueError):
    """Labelled data that cannot be evaluated against the bundle; the message names the file (and both class lists
    when the classes differ)."""


@dataclass(frozen=True)
class LabelledData:
    """Images to stream (a listing for :func:`medstack.inference.inputs.iter_batches`) and their labels in the
    bundle's class order, looked up by the input ids the reader gives (a file path, or ``<npz>:<row>``)."""

    source: str
    kind: str  # "npz" or "folder"
    listing: tuple[str, object]
    labels: dict[str, int]
    data_classes: list[str]  # as the data names them, in its own order

    def labels_of(self, ids: Sequence[str]) -> np.ndarray:
        return np.array([self.labels[i] for i in ids], dtype=np.int64)


def read_labelled(path: str | Path, bundle_classes: Sequence[str], class_names: Sequence[str] | None = None
                  ) -> LabelledData:
    """The labelled data at ``path``, its classes matched to ``bundle_classes`` (``class_names``: an npz's class
    names when the file has none; they must agree with the file's when it has some)."""
    path = Path(path).expanduser()
    if path.is_dir():
        if class_names:
            raise EvaluationError(f"{path}: --class-names is for an npz; an image folder names its classes by "
                                  "its sub-folders")
        return _read_folder(path, list(bundle_classes))
    if not path.exists():
        raise EvaluationError(f"{path}: no such file or folder")
    if path.suffix.lower() != ".npz":
        raise EvaluationError(f"{path}: not an npz or a folder; {_UNLABELLED_HINT}")
    return _read_npz(path, list(bundle_classes), class_names)


def match_classes(where: Path | str, data_classes: Sequence[str], bundle_classes: Sequence[str]) -> list[int]:
    """Per data class, its index among the bundle's classes; an error naming both lists unless they hold the same
    names (the order may differ)."""
    data_classes, bundle_classes = [str(c) for c in data_classes], [str(c) for c in bundle_classes]
    if len(set(data_classes)) != len(data_classes) or sorted(data_classes) != sorted(bundle_classes):
        missing = [c for c in bundle_classes if c not in data_classes]
        extra = [c for c in data_classes if c not in bundle_classes]
        detail = "; ".join(part for part in (f"missing {missing}" if missing else "",
                                             f"not in the model {extra}" if extra else "",
                                             "a class named twice" if len(set(data_classes)) != len(data_classes)
                                             else "") if part)
        raise EvaluationError(f"{where}: the data's classes {data_classes} do not match the model's classes "
                              f"{bundle_classes} ({detail}); classes are matched by name")
    return [bundle_classes.index(c) for c in data_classes]


def _read_folder(root: Path, bundle_classes: list[str]) -> LabelledData:
    from medstack.data.folder import walk_images  # the training walk: hidden files skipped, loops refused

    entries = sorted((e for e in os.scandir(root) if not e.name.startswith(".")), key=lambda e: e.name)
    folders = [e.name for e in entries if e.is_dir()]
    loose = [e.name for e in entries if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS]
    if loose:
        raise EvaluationError(f"{root}: {len(loose)} image(s) lie directly in the folder with no class sub-folder "
                              f"(e.g. {loose[0]}); {_UNLABELLED_HINT}")
    if not folders:
        raise EvaluationError(f"{root}: no class sub-folders; {_UNLABELLED_HINT}")
    index = match_classes(root, folders, bundle_classes)
    visited: dict[str, Path] = {}
    files, labels = [], {}
    try:
        for name, label in zip(folders, index):
            for file in sorted(walk_images(root / name, visited), key=lambda p: p.as_posix()):
                files.append(file)
                labels[str(file)] = label
    except DataError as exc:
        raise EvaluationError(str(exc)) from exc
    if not files:
        raise EvaluationError(f"{root}: the class folders {folders} hold no image files "
                              f"(extensions {sorted(IMAGE_EXTENSIONS)})")
    return LabelledData(str(root), "folder", ("files", files), labels, folders)


def _read_npz(path: Path, bundle_classes: list[str], given: Sequence[str] | None) -> LabelledData:
    from medstack.inference.inputs import InputError, count_inputs, list_inputs

    try:
        listing = list_inputs(path)  # the image keys prediction reads, in its row order
    except InputError as exc:
        raise EvaluationError(str(exc)) from exc
    _, (_, image_keys) = listing
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            label_keys = [key.replace("images", "labels") for key in image_keys]
            absent = [key for key in label_keys if key not in keys]
            if absent:
                raise EvaluationError(f"{path}: no labels ({', '.join(absent)} missing; the file has "
                                      f"{sorted(keys)}); {_UNLABELLED_HINT}")
            stored = _stored_class_names(path, npz) if CLASS_NAMES_KEY in keys else None
            parts = [(key, np.asarray(npz[key])) for key in label_keys]
    except EvaluationError:
        raise
    except Exception as exc:  # zip errors, object arrays refused without pickle
        raise EvaluationError(f"{path}: cannot read as npz: {exc}") from exc
    names = _class_names(path, stored, given, bundle_classes)
    index = np.asarray(match_classes(path, names, bundle_classes), dtype=np.int64)
    raw = np.concatenate([_label_column(path, key, values) for key, values in parts])
    n_images = count_inputs(listing)  # from the arrays' headers: no image is read yet
    if len(raw) != n_images:
        raise EvaluationError(f"{path}: {len(raw)} labels ({', '.join(label_keys)}) for {n_images} images")
    if raw.size == 0:
        raise EvaluationError(f"{path}: holds no images")
    if raw.min() < 0 or raw.max() >= len(names):
        raise EvaluationError(f"{path}: labels run {raw.min()}..{raw.max()}, but the class names {names} number "
                              f"labels 0..{len(names) - 1}")
    ids = [f"{path}:{row}" for row in range(len(raw))]  # as medstack.inference.inputs numbers npz rows
    return LabelledData(str(path), "npz", listing, dict(zip(ids, index[raw].tolist())), names)


def _stored_class_names(path: Path, npz) -> list[str]:
    values = npz[CLASS_NAMES_KEY]
    if values.dtype.kind not in "US" or values.ndim != 1:
        raise EvaluationError(f"{path}: key {CLASS_NAMES_KEY!r} must be a 1-d array of strings, got "
                              f"{values.dtype} of shape {values.shape}")
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist()]


def _class_names(path: Path, stored: list[str] | None, given: Sequence[str] | None, bundle_classes: list[str]
                 ) -> list[str]:
    given = [str(c).strip() for c in given] if given else None
    if stored is None and given is None:
        raise EvaluationError(f"{path}: the npz does not name its classes: add a {CLASS_NAMES_KEY!r} key (label i "
                              f"is class_names[i]) or pass --class-names (the model's classes are {bundle_classes})")
    if stored is not None and given is not None and stored != given:
        raise EvaluationError(f"{path}: --class-names {given} disagrees with the file's {CLASS_NAMES_KEY!r} "
                              f"{stored}")
    return stored if stored is not None else given


def _label_column(path: Path, key: str, values: np.ndarray) -> np.ndarray:
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise EvaluationError(f"{path}: key {key!r} must hold one integer class index per image, got "
                              f"{values.dtype} of shape {values.shape} (multi-label data is not supported)")
    return values.astype(np.int64)
