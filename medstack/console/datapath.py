"""``--data PATH`` fits the path: a folder is an image folder, ``*.npz`` an npz file.

When the config's ``data.source`` says otherwise, the source is switched and the switch is said in one line; what
cannot be guessed (``data.image_size`` for a folder) is asked for, naming the key. Only the path is looked at here
(its kind, the names of its sub-folders); reading the data is the loader's job.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from medstack.config import ConfigError

_GROUP_KINDS = {"folder": ("breakhis", "filename_regex", "csv"), "npz": ("npz_key",)}


def source_of(path: Path) -> str:
    """``folder`` or ``npz`` for an existing path; a ConfigError for anything else."""
    if not path.exists():
        raise ConfigError(f"--data {path}: no such file or folder")
    if path.is_dir():
        return "folder"
    if path.suffix.lower() == ".npz":
        return "npz"
    raise ConfigError(f"--data {path}: a {path.suffix or 'extension-less'} file; medstack reads an .npz file "
                      "(images + labels) or an image folder (one sub-folder per class)")


def fit_data_path(config_path: Path, data: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Overrides that point the config at ``data`` (switching ``data.source`` to fit), and the notes to print."""
    path = Path(data).expanduser()
    wanted = source_of(path)
    fitted = {**overrides, "data.path": str(path)}
    if "data.source" in overrides:  # the user said which source; the loader checks the path against it
        return fitted, []
    section = _data_section(config_path, overrides)
    current = section.get("source", "npz")
    if current == wanted:
        return fitted, []
    kind = "an image folder" if wanted == "folder" else "an npz file"
    notes = [f"--data {path} is {kind}: using data.source {wanted} (the config says {current})"]
    fitted["data.source"] = wanted
    group_by = section.get("group_by")
    group_kind = group_by.get("kind") if isinstance(group_by, dict) else None
    if group_kind not in (None, "none") and group_kind not in _GROUP_KINDS[wanted]:
        kinds = ", ".join(_GROUP_KINDS[wanted])
        raise ConfigError(f"--data {path} is {kind}, but data.group_by kind {group_kind!r} does not work with it; "
                          f"set data.group_by to one of {kinds} (e.g. --set data.group_by.kind=...) or to none "
                          "(--set data.group_by=none, every image its own group)")
    if wanted == "folder":
        if not section.get("image_size"):
            raise ConfigError(f"--data {path} is an image folder, and images in a folder differ in size: say which "
                              "size the model sees with data.image_size, e.g. --set data.image_size=[28,28]")
        names = section.get("class_names")
        folders = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
        if names and sorted(map(str, names)) != folders:
            fitted["data.class_names"] = None
            notes.append(f"data.class_names {list(names)} describe the config's dataset, not this folder: "
                         f"classes come from its sub-folders {folders}")
    return fitted, notes


def _data_section(config_path: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The config's ``data`` section with ``--set data.*`` applied (unreadable files are load_config's to report)."""
    try:
        raw = yaml.safe_load(Path(config_path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        raw = {}
    section = dict(raw.get("data") or {}) if isinstance(raw, dict) else {}
    for dotted, value in overrides.items():
        if dotted.startswith("data.") and dotted.count(".") == 1:
            section[dotted.split(".", 1)[1]] = value
        elif dotted == "data" and isinstance(value, dict):
            section = dict(value)
    return section
