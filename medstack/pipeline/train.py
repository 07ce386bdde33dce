"""Train stage: one (strategy, fold) training or its fold-cache entry, the cache key, seeds and the summary."""

from __future__ import annotations

import ast
import hashlib
import logging
import os
import socket
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medstack.config import RunConfig, stable_hash
from medstack.pipeline.fold_cache import FoldCache, FoldResult
from medstack.pipeline.prepare import FoldData, PreparedData
from medstack.run_folder import training_key

log = logging.getLogger(__name__)


def code_version() -> str:
    """Hash of the ``medstack.models`` sources a fold's training runs (:func:`training_modules`): a change to how
    models train invalidates cached folds; a change to the ensembles, decisions or metrics, which are recomputed
    from the cached predictions on every run, does not."""
    import medstack.models  # the package only (a docstring): no TensorFlow import

    folder = Path(medstack.models.__file__).resolve().parent
    digest = hashlib.sha256()
    for name in sorted(training_modules()):
        digest.update(f"{name}.py".encode() + (folder / f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]


def training_modules() -> set[str]:
    """``models/training.py`` and every module of ``medstack.models`` it imports, directly or through another one,
    at module level or inside a function, found by reading the sources (nothing is imported)."""
    import medstack.models

    folder = Path(medstack.models.__file__).resolve().parent
    found: set[str] = set()
    todo = ["training"]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                base = module if node.level == 0 else f"medstack.models.{module}".rstrip(".")  # from .x / from . import x
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            todo += [t.split(".")[2] for t in targets
                     if t.startswith("medstack.models.") and (folder / f"{t.split('.')[2]}.py").is_file()]
    return found


def fold_cache_key(prepared: PreparedData, cfg: RunConfig, strategy: str, fold: int, version: str) -> str:
    """Everything a fold's training depends on, and nothing else (not the meta-model, not the report)."""
    return stable_hash(
        prepared.fingerprint,
        fold,
        strategy,
        cfg.strategies[strategy],
        cfg.model.model_dump(mode="json"),
        cfg.augmentation.model_dump(mode="json"),
        cfg.training.model_dump(mode="json"),
        cfg.data.image_size,
        cfg.seed,
        version,
    )


def cached_folds(prepared: PreparedData, cfg: RunConfig, cache: FoldCache, version: str) -> list[FoldResult]:
    """Every (strategy, fold) of this config from the fold cache, training nothing (benchmarks re-score a finished
    run this way); a missing entry is an error naming it."""
    results = []
    for strategy in cfg.strategies:
        for fold in range(cfg.split.folds):
            found = cache.load(fold_cache_key(prepared, cfg, strategy, fold, version))
            if found is None:
                raise LookupError(f"{strategy} fold {fold + 1}: not in the fold cache {cache.root} (trained with this "
                                  f"code version {version} and config?)")
            results.append(found)
    return results


def fold_seed(seed: int, strategy: str, fold: int) -> int:
    """A distinct, reproducible seed per (strategy, fold)."""
    return (seed * 7919 + fold * 131 + zlib.crc32(strategy.encode())) % 1_000_000


def train_one_fold(
    prepared: PreparedData, cfg: RunConfig, strategy: str, fold: int, cache: FoldCache, version: str,
    on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
) -> FoldResult:
    """Train one strategy on folds != ``fold`` (or load it from the cache) and predict the held-out fold, val, test
    and the calibration slice (which no training sees).

    ``on_epoch(epoch, epochs, metrics)`` hears every finished epoch (progress only: it never changes the result)."""
    return train_network(prepared, cfg, cache, fold_cache_key(prepared, cfg, strategy, fold, version), strategy, fold,
                         strategy, cfg.strategy_params(strategy), lambda: prepared.fold_data(fold), on_epoch)


def train_network(
    prepared: PreparedData, cfg: RunConfig, cache: FoldCache, key: str, name: str, fold: int, learns: str,
    params: Any, data: Callable[[], FoldData],
    on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
) -> FoldResult:
    """The fold-cache entry ``key``, or one network of the run's model trained with strategy ``learns`` (its
    ``params``) on ``data()``'s training part, early-stopped on val, then predicting the held-out rows, val, test
    and the calibration slice; saved under ``key`` as training ``name``/``fold``. A fold model
    (:func:`train_one_fold`) and the student (medstack.pipeline.student) both train here."""
    cached = cache.load(key)
    if cached is not None:
        log.info("train[%s]: cache hit %s", training_key(name, fold), key)
        return cached
    # TensorFlow loads only where a network trains: a run whose folds all come from the cache never imports it.
    from medstack.models.training import CNNClassifier, configure_accelerators

    configure_accelerators()
    started = time.time()
    arrays = data()
    clf = CNNClassifier(
        learns,
        params,
        prepared.num_classes,
        cfg.model,
        cfg.augmentation,
        cfg.training,
        image_size=cfg.data.image_size,
        seed=fold_seed(cfg.seed, name, fold),
        positive_class=prepared.positive_class,
        on_epoch=on_epoch,
    ).fit(arrays.x_train, arrays.y_train, arrays.x_val, arrays.y_val)
    oof_proba, val_proba, test_proba, cal_proba = clf.predict_proba_many(
        [arrays.x_holdout, arrays.x_val, arrays.x_test, arrays.x_cal])
    result = FoldResult(
        strategy=name,
        fold=fold,
        cache_key=key,
        oof_index=arrays.holdout_rows,
        oof_proba=oof_proba,
        val_proba=val_proba,
        test_proba=test_proba,
        cal_proba=cal_proba,
        history=clf.history_,
        info={**clf.info_, "worker": worker_info(started)},
    )
    return cache.save(result, clf.save)


def worker_info(started: float) -> dict[str, Any]:
    """Where and when a fold trained: host, process id, start and end (Unix seconds)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": round(started, 3),
            "finished": round(time.time(), 3)}


def summarise_training(results: list[FoldResult], wall_seconds: float) -> dict[str, Any]:
    """Counts and timings for the manifest and report: what was trained, what came from the cache."""
    trained = [r for r in results if not r.from_cache]
    return {
        "wall_seconds": round(wall_seconds, 1),
        "flow_peak_rss_mb": _peak_rss_mb(),
        "trained": len(trained),
        "cache_hits": len(results) - len(trained),
        "training_seconds": round(sum(r.info.get("seconds", 0.0) for r in trained), 1),
        "folds": {
            training_key(r.strategy, r.fold): {"cache_key": r.cache_key, "from_cache": r.from_cache, **{
                k: r.info.get(k) for k in ("epochs_run", "steps_run", "best_epoch", "seconds", "n_train", "n_synthetic",
                                           "train_inputs_sha", "temperature", "recipe", "tta_views", "worker")
            }}
            for r in results
        },
    }


def _peak_rss_mb() -> float | None:
    """Peak resident memory of this (the flow's) process so far, in MB; trainings in worker processes excluded."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
