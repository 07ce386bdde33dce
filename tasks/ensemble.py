"""Combining and judging: OOF gathering, soft vote + stacking, the one test evaluation."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from medstack import pipeline
from medstack.config import RunConfig
from medstack.pipeline.student import add_student


@task(name="gather_oof", cache_policy=NO_CACHE)
def gather_oof(prepared: pipeline.PreparedData, results: list[pipeline.FoldResult]) -> pipeline.Predictions:
    """OOF matrix (each training row from exactly one model that never saw it) and fold-averaged val/test."""
    return pipeline.gather_predictions(prepared, results)


@task(name="fit_ensembles", cache_policy=NO_CACHE)
def fit_ensembles(prepared: pipeline.PreparedData, preds: pipeline.Predictions, cfg: RunConfig,
                  student: pipeline.FoldResult | None = None) -> pipeline.EnsembleFit:
    """Soft voting and the stacked logistic-regression meta-model, thresholds chosen on OOF; then the one-network
    model (``student``, when the run trained one) with its decision and sets from the calibration slice."""
    ensembles = pipeline.fit_ensembles(prepared, preds, cfg)
    return ensembles if student is None else add_student(prepared, ensembles, student, cfg)


@task(name="evaluate_on_test", cache_policy=NO_CACHE)
def evaluate_on_test(prepared: pipeline.PreparedData, ensembles: pipeline.EnsembleFit, cfg: RunConfig) -> dict:
    """All six models on the untouched test split, with bootstrap confidence intervals."""
    return pipeline.evaluate_on_test(prepared, ensembles, cfg)
