"""Prefect deployments of the ensemble flow: the prefect.yaml build step and ``medstack serve``.

``prefect deploy --all`` runs :func:`config_parameters` once per deployment in ``prefect.yaml``; its output
becomes that deployment's ``config`` parameter, so ``configs/*.yaml`` stay the one place a run is described
and the Prefect UI shows the config as a typed, pre-filled form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medstack.config import RunConfig, load_config

# Config fields holding paths: made absolute at deploy time, so a worker started from another folder (or the
# UI's form) sees exactly the folders the deployment was made with. An unset registry.path stays unset: the worker
# applies the one registry rule (medstack.inference.registry.registry_path), as the predict deployments do.
_PATH_FIELDS = (("data", "path"), ("runtime", "cache_dir"), ("runtime", "output_dir"), ("registry", "path"))


def config_parameters(config: str, base_dir: str | None = None) -> dict[str, Any]:
    """prefect.yaml build step: ``{"config": <the validated config as JSON>}`` for ``{{ <step-id>.config }}``.

    Relative paths in the config are resolved against ``base_dir`` (default: the folder ``prefect deploy``
    runs in, i.e. the one holding prefect.yaml). A config that does not validate fails the deploy, naming the key.
    """
    base = Path(base_dir) if base_dir else Path.cwd()
    cfg = load_config(base / config)
    return {"config": resolve_paths(cfg, base).model_dump(mode="json")}


def resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """A copy of ``cfg`` whose relative data/cache/output paths are absolute under ``base``."""
    raw = cfg.model_dump(mode="json")
    for section, key in _PATH_FIELDS:
        value = raw[section][key]
        if value and not Path(value).expanduser().is_absolute():
            raw[section][key] = str((base / value).resolve())
    return RunConfig.model_validate(raw)


def serve_config(cfg: RunConfig, name: str, cron: str | None = None, timezone: str = "UTC") -> None:
    """Serve the flow as one deployment from this process (``medstack serve``): no work pool, no worker."""
    from prefect.client.schemas.schedules import CronSchedule

    from medstack.flows.ensemble import ensemble_flow

    schedules = [CronSchedule(cron=cron, timezone=timezone)] if cron else None
    ensemble_flow.serve(
        name=name,
        parameters={"config": resolve_paths(cfg, Path.cwd()).model_dump(mode="json")},
        schedules=schedules,
        tags=["medstack", cfg.name],
        description=f"medstack ensemble on {cfg.data.name} (served by `medstack serve`)",
    )
