"""The model registry: a small JSON file mapping ``<name>@<alias>`` to run folders.

Where it lives is one rule for every user (the flow's auto-promotion, ``medstack promote``, ``models``, ``predict``,
``export``, ``serve-model``, the predict flow): :func:`registry_path`. The file is rewritten atomically on every change
and keeps every event: who, when, which run, which alias, and the numbers a decision used. Deployments and services
name an alias, so a promotion changes what they use without a redeploy.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import re
from pathlib import Path
from typing import Any

from medstack.errors import UsageError

SCHEMA = 1
REGISTRY_ENV = "MEDSTACK_REGISTRY"
# The rule in words, for help texts and docs (one place, so they cannot drift from registry_path).
REGISTRY_RULE = (f"${REGISTRY_ENV}, else registry.json in medstack's user data folder "
                 "(Linux: $XDG_DATA_HOME/medstack, by default ~/.local/share/medstack)")
REGISTRY_HELP = f"registry file (default: {REGISTRY_RULE})"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RegistryError(UsageError, ValueError):
    """A registry file or reference that cannot be used; the message names the file."""


def registry_path(registry: str | Path | None = None) -> Path:
    """The registry file: ``registry`` (a ``--registry`` flag, a config's ``registry.path``; relative to the working
    directory), else ``$MEDSTACK_REGISTRY``, else :func:`default_registry`. Returned absolute, so messages name it."""
    chosen = registry or os.environ.get(REGISTRY_ENV) or default_registry()
    return Path(chosen).expanduser().absolute()


def default_registry() -> Path:
    """One file per user, whatever the working directory: a run made with ``--output-dir`` anywhere and a
    ``medstack predict`` started anywhere else meet in it."""
    import platformdirs

    return platformdirs.user_data_path("medstack") / "registry.json"


def read_registry(registry: str | Path | None = None) -> dict[str, Any]:
    path = registry_path(registry)
    if not path.exists():
        return {"schema": SCHEMA, "models": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{path}: not a readable registry: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("models"), dict):
        raise RegistryError(f"{path}: not a medstack registry of schema {SCHEMA}")
    return data


def split_ref(ref: str) -> tuple[str, str]:
    name, sep, alias = ref.partition("@")
    if not sep or not _NAME.fullmatch(name) or not _NAME.fullmatch(alias):
        raise RegistryError(f"{ref!r} is not <name>@<alias> (letters, digits, '.', '_', '-')")
    return name, alias


def resolve(ref: str, registry: str | Path | None = None) -> Path:
    """The run folder ``<name>@<alias>`` points at now."""
    path = registry_path(registry)
    name, alias = split_ref(ref)
    entry = read_registry(path)["models"].get(name)
    if entry is None:
        raise RegistryError(f"{path}: no model named {name!r}" + (f"; known: {sorted(read_registry(path)['models'])}"
                                                                 if path.exists() else " (the registry file does not exist)"))
    if alias not in entry["aliases"]:
        raise RegistryError(f"{path}: {name!r} has no alias {alias!r}; aliases: {sorted(entry['aliases'])}")
    run = Path(entry["aliases"][alias]["path"])
    return run if run.is_absolute() else path.parent / run


def promote(run_dir: str | Path, alias: str = "champion", *, name: str | None = None, registry: str | Path | None = None,
            reason: str = "manual promotion", evidence: dict[str, Any] | None = None, by: str | None = None) -> dict[str, Any]:
    """Point ``<name>@<alias>`` at ``run_dir`` (name: the bundle's config name) and record the event."""
    from medstack.run_folder import read_bundle

    path = registry_path(registry)
    meta = read_bundle(run_dir)  # only a usable bundle can be promoted
    name = name or meta["name"]
    split_ref(f"{name}@{alias}")
    event = {"event": "promote", "alias": alias, "run_id": meta["run_id"], "path": _stored_path(Path(run_dir), path),
             "data_fingerprint": meta["data"]["fingerprint"], "reason": reason, "evidence": evidence or {}}
    return _record(path, name, event, by, alias_target=alias)


def record_decision(name: str, event: dict[str, Any], registry: str | Path | None = None, by: str | None = None) -> dict:
    """Record an event that changed no alias (an auto-promotion that kept the champion, and why)."""
    return _record(registry_path(registry), name, event, by, alias_target=None)


def history(name: str | None = None, registry: str | Path | None = None) -> list[dict[str, Any]]:
    models = read_registry(registry)["models"]
    return [{"model": n, **e} for n, entry in models.items() if name in (None, n) for e in entry["history"]]


def _record(path: Path, name: str, event: dict[str, Any], by: str | None, alias_target: str | None) -> dict:
    import fcntl

    from medstack.storage import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    # Read-modify-write under an exclusive lock: two retrains finishing together must not drop each other's event.
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _record_locked(path, name, event, by, alias_target, atomic_write_json)


def _record_locked(path: Path, name: str, event: dict[str, Any], by: str | None, alias_target: str | None,
                   write) -> dict:
    data = read_registry(path)
    entry = data["models"].setdefault(name, {"aliases": {}, "history": []})
    stamped = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "who": by or _user(), **event}
    if alias_target is not None:
        previous = entry["aliases"].get(alias_target)
        stamped["previous_run_id"] = previous["run_id"] if previous else None
        entry["aliases"][alias_target] = {"run_id": event["run_id"], "path": event["path"], "since": stamped["when"]}
    entry["history"].append(stamped)
    write(path, data)
    return stamped


def _stored_path(run_dir: Path, registry: Path) -> str:
    """Relative to the registry's folder when the run lies under it (so runs/ can move as a whole), else absolute."""
    run, base = run_dir.resolve(), registry.parent.resolve()
    try:
        return run.relative_to(base).as_posix()
    except ValueError:
        return str(run)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return f"uid {os.getuid()}"
