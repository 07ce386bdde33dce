"""Judging one model's probabilities on labelled rows, the way the run judged its own test split.

:func:`judge` gives what :func:`medstack.pipeline.evaluate.evaluate_on_test` gives a model (every metric at the
model's frozen decision, with percentile bootstrap intervals from the same resampling and seed), plus calibration:
the expected calibration error with its interval and the reliability table (:mod:`medstack.models.reliability`).
The settings (resamples, interval, seed, the decision policy a refit follows) are the run's own, read from its
``config.yaml``, so the new data's intervals are comparable with the run's. No Prefect, no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medstack.models.metrics import bootstrap_ci, compute_metrics
from medstack.models.reliability import N_BINS, ece_interval, expected_calibration_error, reliability_table, score_name


@dataclass(frozen=True)
class Settings:
    """How a run judges and decides: bootstrap resamples and interval, seed, positive class, decision policy."""

    n_boot: int
    ci: float
    seed: int
    positive_class: int
    threshold_policy: str
    target_sensitivity: float
    multiclass_policy: str
    critical_recall: dict[int, float] = field(default_factory=dict)
    n_bins: int = N_BINS

    def to_dict(self) -> dict[str, Any]:
        return {"bootstrap": self.n_boot, "ci": self.ci, "seed": self.seed, "positive_class": self.positive_class,
                "threshold_policy": self.threshold_policy, "target_sensitivity": self.target_sensitivity,
                "multiclass_policy": self.multiclass_policy, "ece_bins": self.n_bins}


def run_settings(run_dir: str | Path, classes: Sequence[str], n_boot: int | None = None) -> Settings:
    """The settings of the run in ``run_dir`` (its ``config.yaml``; defaults where an older run lacks a key);
    ``n_boot`` overrides the run's number of resamples."""
    from medstack.config_sections import EnsembleConfig, ReportConfig
    from medstack.run_folder import positive_class_index, read_config_tree

    tree = read_config_tree(run_dir)
    report, ensemble, data = (tree.get(k) if isinstance(tree.get(k), dict) else {}
                              for k in ("report", "ensemble", "data"))
    report_defaults, ensemble_defaults = ReportConfig(), EnsembleConfig()
    critical = ensemble.get("critical_classes") or {}
    return Settings(
        n_boot=int(report.get("bootstrap", report_defaults.bootstrap) if n_boot is None else n_boot),
        ci=float(report.get("ci", report_defaults.ci)),
        seed=int(tree.get("seed", 0)),
        positive_class=positive_class_index(data.get("positive_class"), len(classes)),
        threshold_policy=str(ensemble.get("threshold_policy", ensemble_defaults.threshold_policy)),
        target_sensitivity=float(ensemble.get("target_sensitivity", ensemble_defaults.target_sensitivity)),
        multiclass_policy=str(ensemble.get("multiclass_policy", ensemble_defaults.multiclass_policy)),
        critical_recall={list(classes).index(name): float(t) for name, t in critical.items() if name in classes},
    )


def with_resamples(settings: Settings, n_boot: int) -> Settings:
    return replace(settings, n_boot=n_boot)


def judge(y: np.ndarray, proba: np.ndarray, decision: Mapping[str, Any], settings: Settings,
          class_names: Sequence[str]) -> dict[str, Any]:
    """``metrics`` (all of :func:`compute_metrics` at ``decision``), ``ci`` (bootstrap intervals of the scalar
    metrics, as the run's ``test_ci``) and ``calibration`` (ECE, its interval, the reliability table)."""
    kwargs = dict(threshold=decision.get("threshold"), positive_class=settings.positive_class,
                  offsets=decision.get("offsets"))
    metrics = compute_metrics(y, proba, class_names=list(class_names), **kwargs)
    ci = {k: list(v) for k, v in bootstrap_ci(y, proba, n_boot=settings.n_boot, ci=settings.ci, seed=settings.seed,
                                              **kwargs).items()}
    return {"metrics": metrics, "ci": ci, "calibration": calibration(y, proba, settings)}


def calibration(y: np.ndarray, proba: np.ndarray, settings: Settings) -> dict[str, Any]:
    """ECE (equal-width bins; binary: P(positive), K > 2: top-label confidence), its bootstrap interval and the
    reliability table behind the plot."""
    p = settings.positive_class
    interval = ece_interval(y, proba, p, settings.n_bins, n_boot=settings.n_boot, ci=settings.ci, seed=settings.seed)
    return {"ece": expected_calibration_error(y, proba, p, settings.n_bins),
            "ece_ci": list(interval) if interval else None,
            "score": score_name(np.asarray(proba).shape[1]), "bins": settings.n_bins,
            "reliability": reliability_table(y, proba, p, settings.n_bins)}


def class_counts(y: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(class_names))
    return {name: int(n) for name, n in zip(class_names, counts)}
