"""The medstack ensemble flow: it reads like the DAG.

load_dataset -> make_splits -> make_folds -> train[strategy|fold-k] x (strategies x K, in parallel)
-> gather_oof -> fit_ensembles (soft vote + stacking) -> evaluate_on_test -> write_report -> artifacts

Run it with ``medstack run --config configs/smoke.yaml`` or ``python -m flows.ensemble --config ...``.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from medstack import outputs, pipeline
from medstack.config import RunConfig, RuntimeConfig
from tasks.data import load_dataset, make_folds, make_splits
from tasks.ensemble import evaluate_on_test, fit_ensembles, gather_oof
from tasks.report import publish_artifacts, write_report
from tasks.training import train_fold

FLOW_NAME = "medstack-ensemble"


@flow(name=FLOW_NAME, log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=2))
def ensemble_flow(config: RunConfig) -> str:
    """Train the four imbalance-aware CNNs over K folds, stack and vote them, report all six on the test split."""
    started = time.perf_counter()
    logger = get_run_logger()
    output_dir = outputs.check_output_dir(config.runtime.output_dir)
    outputs.check_cache_dir(config.runtime.cache_dir)
    run_id = outputs.new_run_id(config)

    dataset = load_dataset(config.data)
    splits = make_splits(dataset, config)
    prepared = make_folds(dataset, splits, config)

    futures = [
        train_fold.with_options(
            task_run_name=f"train[{strategy}|fold-{fold + 1}]", tags=[config.runtime.gpu_tag, strategy]
        ).submit(prepared, config, strategy, fold)
        for strategy in config.strategies
        for fold in range(config.split.folds)
    ]
    results = [future.result() for future in futures]

    predictions = gather_oof(prepared, results)
    ensembles = fit_ensembles(prepared, predictions, config)
    metrics = evaluate_on_test(prepared, ensembles, config)
    summary = pipeline.summarise_training(results, wall_seconds=time.perf_counter() - started)
    run_dir = write_report(str(output_dir), run_id, config, prepared, ensembles, metrics, summary)
    publish_artifacts(run_dir)
    logger.info("run folder: %s (%d trained, %d from cache)", run_dir, summary["trained"], summary["cache_hits"])
    return str(run_dir)


def with_runtime(runtime: RuntimeConfig):
    """The flow with the task runner the config asks for (threads by default; processes isolate TF sessions)."""
    runner_cls = ProcessPoolTaskRunner if runtime.task_runner == "processes" else ThreadPoolTaskRunner
    return ensemble_flow.with_options(task_runner=runner_cls(max_workers=runtime.max_workers))


if __name__ == "__main__":
    import sys

    from medstack.cli import main

    raise SystemExit(main(["run", *sys.argv[1:]]))
