"""The plain functions behind every DAG node, one module per stage. No Prefect here: ``medstack.tasks`` wraps these.

load_dataset (medstack.data) -> make_splits -> make_folds (prepare) -> store_prepared (store) -> train_fold, strategy x fold (train)
-> gather_predictions -> fit_ensembles (combine) -> evaluate_on_test (evaluate) -> report (medstack.outputs)

Base models see test *images* only to predict them; nothing fitted anywhere learns from test or val labels,
except early stopping and the LR schedule, which use val.
"""

from medstack.pipeline.combine import (
    ENSEMBLES,
    EnsembleFit,
    Predictions,
    determinism_record,
    fit_ensembles,
    gather_predictions,
)
from medstack.pipeline.evaluate import evaluate_on_test
from medstack.pipeline.prepare import FoldData, PreparedData, SealedLabels, make_folds, make_splits
from medstack.pipeline.store import StoredData, StoreError, open_prepared, store_prepared
from medstack.pipeline.train import cached_folds, code_version, fold_cache_key, fold_seed, summarise_training, train_fold

__all__ = [
    "ENSEMBLES", "EnsembleFit", "FoldData", "Predictions", "PreparedData", "SealedLabels", "cached_folds",
    "code_version", "determinism_record", "evaluate_on_test", "fit_ensembles", "fold_cache_key", "fold_seed",
    "gather_predictions", "make_folds", "make_splits", "open_prepared", "store_prepared", "StoredData", "StoreError",
    "summarise_training", "train_fold",
]
