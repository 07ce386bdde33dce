"""``model.json``'s format: its schema version, the error every bundle problem raises, and the checked reader.

Kept apart from the loader so that the registry can check a run folder before promoting it without importing the
loader (which resolves registry names: one direction of import only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import medstack
from medstack.errors import UsageError

# 3: "models" may hold the one-network student (its file in "student"); a reader that scores every listed model
# needs to know it. 2: the stacking meta-model says which inputs it reads ("inputs": log_odds | probabilities).
SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # 1: stacking on probabilities, no "inputs" key
# How a bundle is scored (--engine of predict, evaluate and serve-model; medstack.inference.fused.make_scorer).
ENGINES = ("fused", "members", "student")
ENGINE_HELP = ("fused: every model of the run in one graph (default); members: each fold model in turn (the "
               "reference); student: the one-network model alone, at one network's cost (its labels only)")


class BundleError(UsageError, ValueError):
    """A run folder that cannot be used as a model; the message names the file."""


def read_bundle_json(file: Path) -> dict[str, Any]:
    """``model.json`` parsed and checked: format, schema version, medstack major version, required keys."""
    if not file.is_file():
        raise BundleError(f"{file}: not found; is {file.parent} a medstack run folder? (runs written before "
                          "model.json existed can be re-run from the fold cache in seconds)")
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{file}: not readable JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != "medstack-bundle":
        raise BundleError(f"{file}: not a medstack model bundle (no 'format: medstack-bundle')")
    if meta.get("schema_version") not in READABLE_VERSIONS:
        raise BundleError(f"{file}: bundle schema version {meta.get('schema_version')!r}; this medstack "
                          f"({medstack.__version__}) reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    theirs, ours = str(meta.get("medstack_version", "?")).split(".")[0], medstack.__version__.split(".")[0]
    if theirs != ours:
        raise BundleError(f"{file}: written by medstack {meta.get('medstack_version')}, major version {theirs}; "
                          f"this is medstack {medstack.__version__} (major {ours})")
    missing = [k for k in ("run_id", "classes", "input", "members", "models", "stacking", "decisions",
                           "training_statistics") if k not in meta]
    if missing:
        raise BundleError(f"{file}: missing keys {missing}")
    return meta
