"""Data tasks: load the dataset, split it, fold its train split."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from medstack import data, pipeline
from medstack.config import DataConfig, RunConfig
from medstack.splits import Splits


@task(name="load_dataset", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def load_dataset(cfg: DataConfig) -> data.Dataset:
    """Load (and if needed download) the dataset; retried because downloads and network disks fail."""
    return data.load_dataset(cfg)


@task(name="make_splits", cache_policy=NO_CACHE)
def make_splits(dataset: data.Dataset, cfg: RunConfig) -> Splits:
    """Stratified or official train/val/test split."""
    return pipeline.make_splits(dataset, cfg)


@task(name="make_folds", cache_policy=NO_CACHE)
def make_folds(dataset: data.Dataset, splits: Splits, cfg: RunConfig) -> pipeline.PreparedData:
    """K stratified folds on train, packaged with the sealed test labels."""
    return pipeline.make_folds(dataset, splits, cfg)
