"""Arrays backed by an unnamed temporary file, so a large dataset is paged by the OS instead of pinned in memory.

A folder of 7,909 BreakHis images at 224x224 RGB is 1.2 GB of pixels. Decoded into a file-backed mapping, those
pages are page cache: the kernel writes them out and drops them under memory pressure, and reads back only the rows
a stage touches. The file has no name (``tempfile.TemporaryFile``: ``O_TMPFILE`` on Linux, or unlinked at once), so
nothing is left behind whatever happens to the process; it lives as long as the array (or a view of it) does.
Space is reserved up front, so a full disk is a clear error now rather than a ``SIGBUS`` on some later write.
"""

from __future__ import annotations

import errno
import mmap
import os
import tempfile
from math import prod
from pathlib import Path

import numpy as np

from medstack.data.dataset import DataError


def scratch_array(shape: tuple[int, ...], dtype: np.dtype | type = np.uint8,
                  directory: str | Path | None = None) -> np.ndarray:
    """A zero-filled, writable ``ndarray`` of ``shape`` mapped from an unnamed file in ``directory`` (default: the
    system temporary folder, ``$TMPDIR``). Raises :class:`DataError` when that folder has no room for it."""
    dtype = np.dtype(dtype)
    nbytes = prod(shape) * dtype.itemsize
    if nbytes == 0:  # mmap cannot map zero bytes
        return np.zeros(shape, dtype)
    where = Path(directory) if directory is not None else Path(tempfile.gettempdir())
    try:
        with tempfile.TemporaryFile(dir=where) as fh:
            _reserve(fh.fileno(), nbytes)
            mapping = mmap.mmap(fh.fileno(), nbytes)  # holds its own descriptor: closing fh is fine
    except OSError as exc:
        raise DataError(f"cannot make a {nbytes / 2**20:.0f} MiB scratch file for the decoded images in {where} "
                        f"({exc}); point TMPDIR at a folder with room") from exc
    return np.frombuffer(mapping, dtype=dtype).reshape(shape)


def _reserve(fd: int, nbytes: int) -> None:
    """Allocate the file's blocks now (ENOSPC here, not SIGBUS later); only size it where that is not available."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, nbytes)
            return
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:  # a filesystem without it: size the file instead
                raise
    os.ftruncate(fd, nbytes)
