"""API keys of ``medstack serve-model``: where they come from, when one is required, and how a request's is checked.

Keys come from a file (``--api-key-file``: one key a line, blank lines and lines starting with ``#`` skipped) and/or
the environment variable ``MEDSTACK_API_KEYS`` (keys separated by commas or newlines), never from the command line,
where ``ps`` and the shell history would show them. Every key read is valid at once, so a key is rotated without
downtime: add the new key, reload, move the clients over, remove the old key, reload. Only SHA-256 digests of the
keys are kept, and a request's key is compared with every one of them in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import threading
from pathlib import Path
from typing import Any, Mapping

from medstack.errors import UsageError

ENV = "MEDSTACK_API_KEYS"
MIN_LENGTH = 16
_PRINTABLE = re.compile(r"[!-~]+")  # printable ASCII, no spaces: what an Authorization header carries unchanged
_MAKE_ONE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class ApiKeyError(UsageError, ValueError):
    """Keys that cannot be used, or a server that must not start without one; the message says what to do."""


def parse_keys(text: str, source: str, separators: str = "\n", unit: str = "line") -> list[str]:
    """The keys in ``text``, one per ``separators``-split ``unit``, in order and without repeats; blank items and items
    starting with ``#`` are skipped. A key that is too short or holds anything but printable ASCII is refused by its
    position in ``source`` (the key itself is never repeated in a message)."""
    keys: list[str] = []
    for number, item in enumerate(re.split(f"[{re.escape(separators)}]", text), start=1):
        key = item.strip()
        if not key or key.startswith("#"):
            continue
        where = f"{source}, {unit} {number}"
        if not _PRINTABLE.fullmatch(key):
            raise ApiKeyError(f"{where}: a key must be printable ASCII without spaces (one key a line; comments "
                              "on lines of their own, starting with #)")
        if len(key) < MIN_LENGTH:
            raise ApiKeyError(f"{where}: a key of {len(key)} characters is too short, use at least {MIN_LENGTH} "
                              f"(make one with {_MAKE_ONE})")
        if key not in keys:
            keys.append(key)
    return keys


def read_keys(file: str | Path | None, environ: Mapping[str, str]) -> list[str] | None:
    """Every key of ``file`` and of ``$MEDSTACK_API_KEYS`` in ``environ``; ``None`` when neither is given (an empty
    variable counts as not given). A given source that cannot be read or holds no key raises :class:`ApiKeyError`."""
    keys: list[str] = []
    given = False
    if file is not None:
        given = True
        try:
            text = Path(file).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ApiKeyError(f"API key file {file} is not UTF-8 text (one key a line)") from None
        except OSError as exc:
            raise ApiKeyError(f"cannot read the API key file {file}: {exc.strerror or exc}") from None
        found = parse_keys(text, f"API key file {file}")
        if not found:
            raise ApiKeyError(f"API key file {file} holds no key (one key a line; blank lines and # comments "
                              "are skipped)")
        keys += found
    value = environ.get(ENV, "")
    if value.strip():
        given = True
        found = parse_keys(value, f"${ENV}", separators=",\n", unit="item")
        if not found:
            raise ApiKeyError(f"${ENV} holds no key (keys separated by commas or newlines)")
        keys += [k for k in found if k not in keys]
    return keys if given else None


class ApiKeys:
    """The keys a server accepts; :meth:`reload` reads their sources again and swaps them whole."""

    def __init__(self, file: str | Path | None, environ: Mapping[str, str], keys: list[str]):
        self.file, self._environ = file, environ
        self._digests = _digests(keys)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._digests)

    @property
    def sources(self) -> str:
        named = [str(self.file)] if self.file is not None else []
        return " and ".join(named + ([f"${ENV}"] if self._environ.get(ENV, "").strip() else []))

    def check(self, key: str | None) -> bool:
        """Whether ``key`` is one of the keys. Every key is compared, whichever matches, so the time taken does not
        say which one did; comparing digests keeps the key's length out of the timing too."""
        if key is None:
            return False
        given = hashlib.sha256(key.encode("utf-8", "replace")).digest()
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(given, digest)
        return matched

    def reload(self) -> dict[str, Any]:
        """Read the sources again. A source that cannot be read, holds a bad key or leaves no key keeps the keys in
        use: ``kept`` says why."""
        with self._lock:
            try:
                keys = read_keys(self.file, self._environ)
                if not keys:
                    raise ApiKeyError("no key source is left")
            except ApiKeyError as exc:
                return {"keys": len(self._digests), "changed": False,
                        "kept": f"kept the {len(self._digests)} key(s) in use: {exc}"}
            digests = _digests(keys)
            changed = set(digests) != set(self._digests)
            self._digests = digests
            return {"keys": len(digests), "changed": changed, "kept": None}


def load_api_keys(file: str | Path | None, environ: Mapping[str, str]) -> ApiKeys | None:
    """The server's keys, or ``None`` when no source is given; :class:`ApiKeyError` for an unusable source."""
    keys = read_keys(file, environ)
    return None if keys is None else ApiKeys(file, environ, keys)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only: ``localhost``, 127.0.0.0/8 or ::1. Any other name counts as exposed,
    whatever it resolves to now, and so does 0.0.0.0 (every address)."""
    name = host.strip().removeprefix("[").removesuffix("]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, has_keys: bool, insecure: bool) -> str | None:
    """Whether the server may bind ``host``: ``None`` when it may as it is, the warning to show when it may only
    because of ``--insecure``; :class:`ApiKeyError` when it must not start."""
    if has_keys or is_loopback(host):
        return None
    if not insecure:
        raise ApiKeyError(f"--host {host} is not loopback, so anyone on the network could score images and swap "
                          f"the model: give API keys (--api-key-file FILE, one key a line, or ${ENV}), or pass "
                          "--insecure to serve without one")
    return (f"no API key on {host} (--insecure): anyone who can reach this port can score images and swap the "
            "model with POST /reload")


def _digests(keys: list[str]) -> tuple[bytes, ...]:
    return tuple(hashlib.sha256(k.encode("utf-8")).digest() for k in keys)
