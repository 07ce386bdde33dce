"""Fold trainings on a Dask cluster: prefect-dask's ``DaskTaskRunner`` and one GPU per training.

Imported only when ``runtime.task_runner`` is ``dask``, so the other runners never load ``distributed``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dask
from prefect import get_run_logger
from prefect_dask import DaskTaskRunner

from medstack.config import DaskConfig
from medstack.data.parallel import usable_cores


def dask_runner(cfg: DaskConfig) -> DaskTaskRunner:
    """The scheduler at ``cfg.address``, or a temporary local cluster of worker processes on 127.0.0.1 (one
    TensorFlow per process: TensorFlow holds memory per process and is not thread-safe in every corner)."""
    if cfg.address:
        return DaskTaskRunner(address=cfg.address)
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": cfg.n_workers,
        "threads_per_worker": cfg.threads_per_worker,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
        # Dask's nannies set OMP_NUM_THREADS=1 in every worker, and TensorFlow's oneDNN kernels honour it: each
        # training would use one core. Let each use all of them, as in the processes runner: the smoke config's 8
        # trainings on 2 workers took 130 s of flow wall time that way against 161 s with one core each (2 cores).
        "env": {"OMP_NUM_THREADS": str(usable_cores())},
    })


def gpus_per_training(workers: dict[str, dict], cfg: DaskConfig) -> int:
    """``cfg.gpus_per_training``; for ``auto``, 1 when any of ``workers`` (the scheduler's worker info) declares a
    ``GPU`` resource."""
    if cfg.gpus_per_training != "auto":
        return cfg.gpus_per_training
    return int(any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers.values()))


@contextmanager
def gpu_annotation(runner: DaskTaskRunner, cfg: DaskConfig) -> Iterator[int]:
    """Tasks submitted inside ask the scheduler for ``gpus_per_training`` units of the workers' ``GPU`` resource,
    so Dask runs one training per GPU (workers started with ``dask worker ... --resources GPU=1``). This adds
    to, and does not replace, the Prefect concurrency limit on the training tasks' tag."""
    workers = runner.client.scheduler_info(n_workers=-1)["workers"]
    gpus = gpus_per_training(workers, cfg)
    get_run_logger().info(
        "Dask: %d worker(s) at %s; each training asks for %s", len(workers), runner.client.scheduler.address,
        f"{gpus} GPU (worker resource 'GPU')" if gpus else "no GPU resource (no worker declares one)",
    )
    if not gpus:
        yield 0
        return
    with dask.annotate(resources={"GPU": gpus}):
        yield gpus
