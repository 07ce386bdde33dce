"""The flow's first step: the resolved run, before any data is read.

:func:`resolve_run` applies a run's overrides to its config, checks that the output and cache folders can be
written (sweeping what killed writers left there), makes the cache folder absolute and gives the run its id. The
flow calls it once and reads as the DAG from its next line; nothing here knows about Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medstack.config import RunConfig, apply_overrides
from medstack.outputs import check_cache_dir, check_output_dir, new_run_id
from medstack.tracking.store import require_mlflow, wants_mlflow


@dataclass(frozen=True)
class ResolvedRun:
    """A run ready to start: its config (overrides applied, ``runtime.cache_dir`` absolute), the absolute output
    folder its run folder will be written in, and its run id (the run folder's name)."""

    config: RunConfig
    output_dir: Path
    run_id: str


def resolve_run(config: RunConfig, overrides: dict[str, Any] | None = None) -> ResolvedRun:
    """``config`` with dotted-key ``overrides`` applied, its folders checked, and a new run id.

    MLflow, when the config or the environment asks for it, must be installed (else
    :class:`medstack.tracking.store.MlflowMissing`). The output folder is checked next, then the cache folder;
    either failing raises :class:`medstack.outputs.OutputError` before anything is trained.
    ``runtime.output_dir`` stays as given (the run folder's ``config.yaml`` shows it so); the cache folder becomes
    absolute so worker processes, and cluster workers given a shared folder, find the same cache. ``config`` itself
    is not changed.
    """
    config = apply_overrides(config, overrides)
    if why := wants_mlflow(config):  # the mlflow extra is missing: say so now, not after training
        require_mlflow(why)
    output_dir = check_output_dir(config.runtime.output_dir)
    config = apply_overrides(config, {"runtime.cache_dir": str(check_cache_dir(config.runtime.cache_dir))})
    return ResolvedRun(config=config, output_dir=output_dir, run_id=new_run_id(config))
