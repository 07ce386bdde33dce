"""Tracking node: the finished run logged to MLflow (and its bundle registered there), linked both ways with the
Prefect flow run."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact
from prefect.cache_policies import NO_CACHE

from medstack.config import RunConfig
from medstack.pipeline import FoldResult

MLFLOW_RUN_KEY = "mlflow-run"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store by default


@task(name="track_run", cache_policy=NO_CACHE)  # no retries: a second try would log a second MLflow run
def track_run(run_dir: str, cfg: RunConfig, results: list[FoldResult]) -> dict | None:
    """Log the run folder and its fold trainings to MLflow when the config or $MLFLOW_TRACKING_URI asks for it
    (medstack.tracking.store), and register the bundle with ``registry.backend: mlflow``. Returns where it went
    (None: not tracked)."""
    from medstack.tracking.store import mlflow_target

    target = mlflow_target(cfg)
    if target is None:
        return None
    from medstack.tracking.registry import register_bundle
    from medstack.tracking.runs import log_run

    tracked = log_run(run_dir, results, target, tags=prefect_links())
    out = {"uri": tracked.uri, "experiment_id": tracked.experiment_id, "run_id": tracked.run_id, "url": tracked.url}
    if cfg.registry.backend == "mlflow":
        out.update(model=cfg.registry.name or cfg.name, version=register_bundle(tracked, run_dir,
                                                                                cfg.registry.name or cfg.name))
    link = tracked.url or f"{LOCAL_UI}/#/experiments/{tracked.experiment_id}/runs/{tracked.run_id}"
    where = "" if tracked.url else f" (after `mlflow ui --backend-store-uri {tracked.uri}`)"
    create_link_artifact(link, link_text=f"MLflow run {tracked.run_id}", key=MLFLOW_RUN_KEY,
                         description=f"this run in MLflow at {tracked.uri}{where}")
    get_run_logger().info("MLflow run %s in %s%s", tracked.run_id, tracked.uri,
                          f", model {out['model']} version {out['version']}" if "version" in out else "")
    return out


def prefect_links() -> dict[str, str]:
    """The Prefect flow run this task belongs to, as MLflow tags: its id, name and UI page (when known)."""
    from prefect.runtime import flow_run

    tags = {"prefect.flow_run_id": str(flow_run.id or ""), "prefect.flow_run_name": str(flow_run.name or "")}
    if flow_run.ui_url:
        tags["prefect.flow_run_url"] = str(flow_run.ui_url)
    return {key: value for key, value in tags.items() if value}
