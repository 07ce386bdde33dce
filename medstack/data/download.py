"""Datasets medstack can download by name, md5-checked, into ``$MEDSTACK_DATA_DIR``."""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from medstack.data.dataset import DataError
from medstack.errors import RUN_FAILED, MedstackError
from medstack.storage import atomic_file, sweep_stale_temporaries

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class DownloadError(MedstackError, OSError):
    """The network failed a download. An ``OSError``, so the load_dataset task retries it (a DataError it would not)."""

    exit_code, kind = RUN_FAILED, "download failed"
    hint = "check the network and try again, or download the file yourself and pass --data FILE.npz"


class ChecksumError(DataError):
    """A download that arrived whole but with the wrong md5: not retried (a DataError), yet a failed run (exit 1)."""

    exit_code, kind = RUN_FAILED, "download failed"
    hint = "try again, or download the file yourself and pass it with --data FILE.npz"


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
            raise DownloadError(f"download of {url} failed: {exc}") from exc
        if digest.hexdigest() != md5.lower():
            raise ChecksumError(f"download of {url}: md5 mismatch, expected {md5.lower()}, got {digest.hexdigest()}")
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
