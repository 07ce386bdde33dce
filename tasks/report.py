"""Report node: the run folder on disk and the same report as Prefect artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from medstack import outputs, pipeline
from medstack.config import RunConfig
from medstack.report import ui_markdown
from medstack.run_contents import compose_run
from medstack.run_folder import read_leaderboard

REPORT_KEY = "ensemble-report"
LEADERBOARD_KEY = "ensemble-leaderboard"
RUN_FOLDER_KEY = "ensemble-run-folder"


@task(name="write_report", cache_policy=NO_CACHE)
def write_report(
    output_dir: str,
    run_id: str,
    cfg: RunConfig,
    prepared: pipeline.PreparedData,
    ensembles: pipeline.EnsembleFit,
    metrics: dict,
    extra: dict[str, Any],
) -> Path:
    """Write runs/<run-id>/ atomically: metrics, leaderboard, predictions, plots, models, config, manifest."""
    return outputs.write_run(Path(output_dir), run_id, compose_run(run_id, cfg, prepared, ensembles, metrics, extra))


@task(name="publish_artifacts", cache_policy=NO_CACHE)
def publish_artifacts(run_dir: Path) -> None:
    """The report (plots inlined so the UI shows them), the leaderboard table and a link to the run folder."""
    create_markdown_artifact(ui_markdown(run_dir), key=REPORT_KEY, description=f"medstack report {run_dir.name}")
    board = read_leaderboard(run_dir).round(4)
    create_table_artifact(
        board.astype(object).where(board.notna(), None).to_dict(orient="records"),
        key=LEADERBOARD_KEY,
        description="test-split metrics of every model",
    )
    create_link_artifact(run_dir.resolve().as_uri(), link_text=str(run_dir), key=RUN_FOLDER_KEY)

