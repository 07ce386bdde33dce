"""Data tasks: load the dataset, split it, fold its train split, store the result for the trainings to read."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from medstack import data, pipeline
from medstack.config import DataConfig, RunConfig
from medstack.splits import Splits
from medstack.tasks.retry import is_transient


@task(name="load_dataset", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=is_transient)
def load_dataset(cfg: DataConfig) -> data.Dataset:
    """Load (and if needed download) the dataset; retried when a download or a network disk fails."""
    return data.read_dataset(cfg)


@task(name="make_splits", cache_policy=NO_CACHE)
def make_splits(dataset: data.Dataset, cfg: RunConfig) -> Splits:
    """Stratified or official train/val/test split."""
    return pipeline.split_rows(dataset, cfg)


@task(name="make_folds", cache_policy=NO_CACHE)
def make_folds(dataset: data.Dataset, splits: Splits, cfg: RunConfig) -> pipeline.PreparedData:
    """K stratified folds on train, packaged with the sealed test labels."""
    return pipeline.prepare_folds(dataset, splits, cfg)


@task(name="store_dataset", cache_policy=NO_CACHE)
def store_dataset(prepared: pipeline.PreparedData, cache_dir: str) -> pipeline.PreparedData:
    """Write the prepared dataset once under the cache, content-addressed; trainings get it by reference."""
    return pipeline.store_prepared(prepared, cache_dir)
