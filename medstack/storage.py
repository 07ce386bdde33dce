"""Atomic writes: every file a run or the cache leaves behind appears whole or not at all.

A file or folder is written under a temporary name in the same folder and renamed into place (the fold cache,
:mod:`medstack.pipeline.fold_cache`, stores its entries this way).

Temporary names start with ``.`` and end with ``.tmp``, and carry their writer (a host tag and the pid), so a
later run can remove what a killed writer left (:func:`sweep_stale_temporaries`) without ever touching a
temporary that a live run on this host is still writing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

log = logging.getLogger(__name__)

# Longest a temporary whose writer cannot be asked (another host, or a name without a writer) is kept: writes
# take seconds, so a day-old temporary is garbage even if a pid on this host was reused.
STALE_AFTER_S = 24 * 3600
_TEMP = re.compile(r"\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp")


def _host_tag() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _writer_tag() -> str:
    """``<host>-<pid>``, put in every temporary name so a sweeper can tell whether its writer is alive."""
    return f"{_host_tag()}-{os.getpid()}"


def temporary_prefix(name: str) -> str:
    """Prefix for a temporary of ``name`` (``.<name>.<host>-<pid>-``; end it with ``.tmp``) that
    :func:`sweep_stale_temporaries` removes once its writer is gone."""
    return f".{name}.{_writer_tag()}-"


@contextmanager
def atomic_file(path: str | Path, mode: int | None = None) -> Iterator[BinaryIO]:
    """Yield a binary handle on a writer-tagged temporary beside ``path``; when the block ends without an error the
    temporary is synced, given ``mode`` (``mkstemp`` creates 0600) and renamed to ``path``, otherwise removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path.name), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; on success it is renamed to ``final``, on error removed.

    If ``final`` appears meanwhile (another process finished the same work), ours is dropped and theirs kept.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{temporary_prefix(final.name)}{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()  # never an existing folder or symlink: mkdir refuses both
    try:
        yield tmp
        _fsync_tree(tmp)  # a power cut after the rename must not leave an entry of empty files
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def sweep_stale_temporaries(folder: str | Path, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporaries (``.*.tmp``) in ``folder`` that no live writer owns; returns what was removed.

    A temporary named by a writer on this host is removed once that pid is gone; any other (another host's,
    or one without a writer in its name) only once nothing in it changed for ``max_age_s``. So runs sharing a
    cache or output folder never remove each other's work in progress. Symlinks are unlinked, never followed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    host, now = _host_tag(), time.time()
    for entry in os.scandir(folder):
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            continue
        writer = _TEMP.fullmatch(entry.name)
        if writer and writer["host"] == host and not _pid_alive(int(writer["pid"])):
            why = f"its writer (pid {writer['pid']}) is gone"
        elif now - _newest_mtime(Path(entry.path)) > max_age_s:
            why = f"untouched for over {max_age_s / 3600:g} h"
        else:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
        log.warning("removed stale temporary %s: %s", entry.path, why)
        removed.append(Path(entry.path))
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # os.kill(pid, 0) would terminate it on Windows: assume alive, fall back to age
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _newest_mtime(path: Path) -> float:
    try:
        newest = path.lstat().st_mtime
    except FileNotFoundError:  # removed meanwhile by its writer or another sweeper
        return time.time()
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
                except FileNotFoundError:
                    pass
    return newest
