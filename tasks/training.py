"""The fan-out node: one task per (strategy, fold)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from medstack import pipeline
from medstack.config import RunConfig
from medstack.storage import FoldCache, FoldResult


@task(name="train", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def train_fold(prepared: pipeline.PreparedData, cfg: RunConfig, strategy: str, fold: int) -> FoldResult:
    """Train one base model on folds != fold (or load it from the fold cache) and predict OOF, val and test."""
    from models.training import configure_accelerators

    configure_accelerators()
    cache = FoldCache(cfg.runtime.cache_dir)
    return pipeline.train_fold(prepared, cfg, strategy, fold, cache, pipeline.code_version())
