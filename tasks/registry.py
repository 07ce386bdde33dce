"""Registry node: the scheduled retrain's auto-promotion, its outcome as an artifact."""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from medstack.config import RunConfig

PROMOTION_KEY = "ensemble-promotion"


@task(name="promote_if_better", cache_policy=NO_CACHE)
def promote_if_better(run_dir: str, cfg: RunConfig, tracked: dict | None = None) -> dict:
    """Apply the auto-promotion rule (medstack.inference.promotion) and record the outcome in the registry that
    every other command reads (medstack.inference.registry.registry_path), not one beside the run folders; with
    ``registry.backend: mlflow``, in MLflow's registry, on the version ``tracked`` (track_run's answer) registered."""
    if cfg.registry.backend == "mlflow":
        return _promote_in_mlflow(run_dir, cfg, tracked)
    from medstack.inference.promotion import promote_run

    event, registry = promote_run(run_dir, cfg)
    outcome = "promoted" if event["event"] == "promote" else event.get("outcome", event["event"])
    get_run_logger().info("registry %s: %s (%s)", registry, outcome, event.get("reason"))
    create_markdown_artifact(f"## Registry: {outcome}\n\n{event.get('reason', '')}\n\nRecorded in `{registry}`.\n\n"
                             f"```json\n{json.dumps(event, indent=2)}\n```\n", key=PROMOTION_KEY,
                             description=f"auto-promotion of run {event['run_id']}")
    return event


def _promote_in_mlflow(run_dir: str, cfg: RunConfig, tracked: dict | None) -> dict:
    from medstack.tracking.registry import promote_version

    if not tracked or "version" not in tracked:
        raise ValueError("registry.backend mlflow: the run's model version is missing (track_run registers it)")
    verdict = promote_version(tracked["uri"], tracked["model"], tracked["version"], run_dir, cfg.registry.alias,
                              cfg.registry.min_improvement)
    ref = f"models:/{verdict['name']}@{verdict['alias']}"
    get_run_logger().info("MLflow registry %s: %s (%s)", ref, verdict["outcome"], verdict["reason"])
    create_markdown_artifact(f"## Registry: {verdict['outcome']}\n\n{verdict['reason']}\n\nRecorded as tags on "
                             f"version {verdict['version']} of `{verdict['name']}` in MLflow at `{tracked['uri']}`.\n\n"
                             f"```json\n{json.dumps(verdict, indent=2)}\n```\n", key=PROMOTION_KEY,
                             description=f"auto-promotion of {ref}")
    return verdict
