"""The plain functions behind every DAG node, one module per stage. No Prefect here: ``medstack.tasks`` wraps these.

read_dataset (medstack.data) -> split_rows -> prepare_folds (prepare) -> store_prepared (store)
-> train_one_fold, strategy x fold (train, over the fold cache in fold_cache) -> gather_predictions -> fit_ensembles
(combine) -> evaluate_on_test (evaluate) -> report (medstack.outputs)

Base models see test *images* only to predict them; nothing fitted anywhere learns from test or val labels,
except early stopping and the LR schedule, which use val. The calibration slice (``conformal.calibration: split``)
is predicted like test and fits only the conformal sets and referral points (trust, called by fit_ensembles).
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
from medstack.pipeline.fold_cache import FoldCache, FoldResult
from medstack.pipeline.prepare import FoldData, PreparedData, SealedLabels, prepare_folds, split_rows
from medstack.pipeline.store import StoredData, StoreError, open_prepared, store_prepared
from medstack.pipeline.train import cached_folds, code_version, fold_cache_key, fold_seed, summarise_training, train_one_fold

__all__ = [
    "ENSEMBLES", "EnsembleFit", "FoldCache", "FoldData", "FoldResult", "Predictions", "PreparedData", "SealedLabels",
    "cached_folds", "code_version", "determinism_record", "evaluate_on_test", "fit_ensembles", "fold_cache_key",
    "fold_seed", "gather_predictions", "open_prepared", "prepare_folds", "split_rows", "store_prepared", "StoredData",
    "StoreError", "summarise_training", "train_one_fold",
]
