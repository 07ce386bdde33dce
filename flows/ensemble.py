"""The medstack ensemble flow: it reads like the DAG.

load_dataset -> make_splits -> make_folds -> store_dataset -> train[strategy|fold-k] x (strategies x K, in parallel)
-> gather_oof -> fit_ensembles (soft vote + stacking) -> evaluate_on_test -> write_report -> artifacts -> track_run

Run it with ``medstack run --config configs/smoke.yaml``, ``python -m medstack run --config ...``, or as a
Prefect deployment (``prefect.yaml``; ``prefect deployment run 'medstack-ensemble/smoke'``).
"""

# No `from __future__ import annotations` here: Prefect builds the flow's parameter model from these annotations,
# and string annotations fail to resolve when the flow is loaded by `flow.serve` ("RunConfig is not defined").
import time
from typing import Any

from prefect import flow, get_run_logger

from medstack import pipeline
from medstack.config import RunConfig
from medstack.pipeline.student import split_student
from medstack.resolve import resolve_run
from medstack.run_folder import STUDENT
from medstack.tasks.data import load_dataset, make_folds, make_splits, store_dataset
from medstack.tasks.ensemble import evaluate_on_test, fit_ensembles, gather_oof
from medstack.tasks.registry import promote_if_better
from medstack.tasks.report import publish_artifacts, write_report
from medstack.tasks.tracking import track_run
from medstack.tasks.training import train_all

FLOW_NAME = "medstack-ensemble"


@flow(name=FLOW_NAME, log_prints=True)
def ensemble_flow(config: RunConfig, overrides: dict[str, Any] | None = None) -> str:
    """Train the four imbalance-aware CNNs over K folds, stack and vote them, train the one-network student beside
    them (``distill``), and report every model on the test split.

    ``overrides`` maps dotted config keys to values (``{"training.epochs": 2}``) and is applied to ``config``
    first: deployments keep their config and a run changes only what it names.
    """
    started = time.perf_counter()
    run = resolve_run(config, overrides)  # overrides applied, output and cache folders checked, the run id
    config = run.config

    dataset = load_dataset(config.data)
    splits = make_splits(dataset, config)
    prepared = store_dataset(make_folds(dataset, splits, config), config.runtime.cache_dir)
    del dataset  # from here on every task reads the stored, memory-mapped copy; tasks receive only its path

    # The one-network model (distill) trains beside the folds, first: it is the longest training.
    folds = [(STUDENT, 0)] if config.distill.enabled else []
    folds += [(strategy, fold) for strategy in config.strategies for fold in range(config.split.folds)]
    results = train_all(prepared, config, folds, run.run_id)

    members, student = split_student(results)
    predictions = gather_oof(prepared, members)
    ensembles = fit_ensembles(prepared, predictions, config, student)
    metrics = evaluate_on_test(prepared, ensembles, config)
    summary = pipeline.summarise_training(results, wall_seconds=time.perf_counter() - started)
    run_dir = write_report(str(run.output_dir), run.run_id, config, prepared, ensembles, metrics, summary)
    publish_artifacts(run_dir)
    tracked = track_run(str(run_dir), config, results)  # MLflow, when the config or $MLFLOW_TRACKING_URI asks for it
    if config.registry.promote == "auto":
        promote_if_better(str(run_dir), config, tracked)
    get_run_logger().info("run folder: %s (%d trained, %d from cache)", run_dir, summary["trained"],
                          summary["cache_hits"])
    return str(run_dir)
