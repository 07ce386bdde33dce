"""``read_dataset``: the one entry of the data stage, dispatching on ``data.source``; and the digits demo."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from medstack.data.dataset import DataError, Dataset
from medstack.data.download import KNOWN_DATASETS, fetch_known_dataset
from medstack.data.folder import load_image_folder
from medstack.data.npz import load_npz

if TYPE_CHECKING:
    from medstack.config import DataConfig


def read_dataset(cfg: DataConfig) -> Dataset:
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
