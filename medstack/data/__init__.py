"""The data stage: loading image datasets into one :class:`Dataset`, the I/O edge of a run.

Everything downstream (splits, models, ensembles) works on the arrays of a ``Dataset`` and never opens files. Bad
input fails here with a :class:`DataError` naming the file, key or class, so a broken dataset stops a run before
any training starts. One module per job:

| module | job |
|---|---|
| ``dataset`` | the ``Dataset`` type, its checks and fingerprint, ``DataError`` |
| ``images`` | decoding one image file (the function training and prediction share) |
| ``parallel`` | decoding many files on threads, each into its row of one preallocated array |
| ``scratch`` | arrays backed by an unnamed temporary file, so the OS can page a large dataset |
| ``npz`` | MedMNIST-style and plain npz files |
| ``folder`` | image folders, one sub-folder per class |
| ``groups`` | patient/group ids from file names, a regex or a CSV |
| ``download`` | datasets downloadable by name, md5-checked |
| ``load`` | ``read_dataset`` (dispatch on ``data.source``) and the bundled digits demo |
"""

from medstack.data.dataset import SPLIT_CODES, DataError, Dataset, partition_codes
from medstack.data.download import KNOWN_DATASETS, KnownDataset, default_data_dir, download_file, fetch_known_dataset
from medstack.data.folder import load_image_folder
from medstack.data.groups import (
    BREAKHIS_NAME,
    BREAKHIS_PATTERN,
    assign_groups,
    check_breakhis_classes,
    group_ids_from_csv,
    group_ids_from_names,
    read_group_csv,
)
from medstack.data.images import IMAGE_EXTENSIONS, BadImage, decode_image
from medstack.data.load import load_digits_dataset, read_dataset
from medstack.data.npz import load_npz

__all__ = [
    "BREAKHIS_NAME", "BREAKHIS_PATTERN", "IMAGE_EXTENSIONS", "KNOWN_DATASETS", "SPLIT_CODES", "BadImage",
    "DataError", "Dataset", "KnownDataset", "assign_groups", "check_breakhis_classes", "decode_image",
    "default_data_dir", "download_file", "fetch_known_dataset", "group_ids_from_csv", "group_ids_from_names",
    "load_digits_dataset", "load_image_folder", "load_npz", "partition_codes", "read_dataset", "read_group_csv",
]
