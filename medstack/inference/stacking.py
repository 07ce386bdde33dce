"""The stacking meta-model as plain numbers: rebuilt from ``model.json`` without pickle, applied per fold.

It reproduces :meth:`medstack.models.ensemble.StackingMetaModel.predict_proba_per_fold` exactly: features are the
fold-k models' predictions of every member side by side in ``features`` order, as ``inputs`` says
(:func:`medstack.models.ensemble.stack_features`: binary log-odds or P(class 1) per member, multi-class the log or
the value of every class probability), the logistic regression gives binary ``sigmoid(f . w + b)`` or multi-class
``softmax(f @ W.T + b)``, and the K fold outputs are averaged. Bundles of schema version 1 stacked probabilities
and carry no ``inputs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from medstack.models.ensemble import META_FEATURES, stack_features


@dataclass(frozen=True)
class JsonStacking:
    features: list[str]  # member names, in feature order
    coef: np.ndarray  # (1, M) binary, (K, M*K) multi-class
    intercept: np.ndarray  # (1,) binary, (K,) multi-class
    classes: list[int]
    num_classes: int
    C: float | None = None
    inputs: str = "probabilities"  # or "log_odds" (META_FEATURES)

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    @classmethod
    def from_meta_model(cls, meta: Any) -> "JsonStacking":
        est = meta.estimator_
        classes = [int(c) for c in est.classes_]
        return cls(list(meta.model_names_), np.asarray(est.coef_, np.float64), np.asarray(est.intercept_, np.float64),
                   classes, max(len(classes), 2), float(meta.best_C_), meta.features)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "logistic_regression",
            "features": self.features,
            "inputs": self.inputs,
            "feature_columns": _columns_in_words(self.inputs, self.binary),
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
            "classes": self.classes,
            "C": self.C,
            "applied": "per fold k on the fold-k member models, outputs averaged over folds",
        }

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> "JsonStacking":
        if spec.get("kind") != "logistic_regression":
            raise ValueError(f"unknown meta-model kind {spec.get('kind')!r}")
        coef = np.asarray(spec["coef"], np.float64)
        intercept = np.asarray(spec["intercept"], np.float64)
        classes = [int(c) for c in spec["classes"]]
        k = len(classes)
        width = len(spec["features"]) * (1 if k == 2 else k)
        if coef.ndim != 2 or coef.shape != ((1 if k == 2 else k), width) or intercept.shape != (coef.shape[0],):
            raise ValueError(f"coef {coef.shape} / intercept {intercept.shape} do not fit {len(spec['features'])} "
                             f"members and {k} classes")
        if classes != list(range(k)):
            raise ValueError(f"classes must be 0..{k - 1}, got {classes}")
        inputs = spec.get("inputs", "probabilities")
        if inputs not in META_FEATURES:
            raise ValueError(f"inputs must be one of {META_FEATURES}, got {inputs!r}")
        return cls(list(spec["features"]), coef, intercept, classes, k, spec.get("C"), inputs)

    def feature_matrix(self, probas: Mapping[str, np.ndarray]) -> np.ndarray:
        return stack_features(probas, self.features, self.inputs)

    def predict_proba(self, probas: Mapping[str, np.ndarray]) -> np.ndarray:
        z = self.feature_matrix(probas) @ self.coef.T + self.intercept
        if self.binary:
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict_proba_per_fold(self, probas_by_fold: Mapping[str, Sequence[np.ndarray]]) -> np.ndarray:
        counts = {name: len(probas_by_fold[name]) for name in self.features}
        if len(set(counts.values())) != 1 or not min(counts.values()):
            raise ValueError(f"per-fold stacking needs the same number (>= 1) of fold predictions per member, got {counts}")
        n_folds = next(iter(counts.values()))
        return np.mean([self.predict_proba({n: probas_by_fold[n][k] for n in self.features}) for k in range(n_folds)],
                       axis=0)


def _columns_in_words(inputs: str, binary: bool) -> str:
    if inputs == "log_odds":
        return "log(P(class 1) / P(class 0)) of each member" if binary else "log of every class probability of each member"
    return "P(class 1) of each member" if binary else "every class probability of each member"
