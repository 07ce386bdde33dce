"""Combining base models: soft voting and a stacked logistic-regression meta-model.

As in scikit-learn's ``StackingClassifier``, the meta-model learns only from out-of-fold base predictions
(fitting it on in-sample predictions overfits), and in binary problems the collinear first probability column
of every base model is dropped. Its own out-of-fold predictions, used for the ensemble's threshold and OOF
metrics, come from an inner cross-validation over the OOF matrix.

By default it reads log-odds, not probabilities (``ensemble.meta_features``): a logistic regression is linear in
its inputs, and on probabilities 0.99 and 0.9999 are nearly the same number while their evidence differs a
hundredfold. On the OOF rows of the 546- and 1,500-image PneumoniaMNIST runs (``benchmarks/stacking_variants.py``,
10 x stratified 5-fold) log-odds gave held-out ROC AUC 0.9824 and 0.9901 against 0.9813 and 0.9881 on
probabilities, and log loss 0.148 and 0.107 against 0.159 and 0.124.

The meta-model's C is searched by Newton's method (``newton-cholesky``), the Cs of a fold as one warm-started path:
the log-odds reach +-13.8 on very different scales per member, and L-BFGS on them ran into ``max_iter=2000`` again
and again. On a 7-class, 7,202-row OOF matrix (``benchmarks/post_training.py``) the fit and its nested estimate
took 38 s and 160 s with L-BFGS (one BLAS thread) and take seconds now, the same model on the same unscaled
features, the same C chosen and the same held-out log loss to 1e-3; standardising the features instead (also fast)
changes the penalty and chose a worse model there (nested log loss 0.118 against 0.113).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold


def soft_vote(probas: Mapping[str, np.ndarray]) -> np.ndarray:
    """Unweighted mean of the base models' class probabilities."""
    if not probas:
        raise ValueError("soft voting needs at least one base model")
    return np.mean(np.stack(list(probas.values())), axis=0)


META_FEATURES = ("log_odds", "probabilities")
SOLVER = "newton-cholesky"  # see the module docstring; multinomial since scikit-learn 1.6
PROBA_CLIP = 1e-6  # log-odds of probabilities clipped to [1e-6, 1 - 1e-6]: at most +-13.8, never infinite


def stack_features(probas: Mapping[str, np.ndarray], model_names: list[str], kind: str = "probabilities") -> np.ndarray:
    """The meta-model's input, base models side by side in ``model_names`` order.

    ``probabilities``: binary P(class 1) of each model (P(class 0) = 1 - P(class 1) is collinear), multi-class every
    class probability. ``log_odds``: binary log(P(class 1) / P(class 0)); multi-class the log of every class
    probability (any two of a model's columns differ by that pair's log-odds). Probabilities are clipped to
    [PROBA_CLIP, 1 - PROBA_CLIP] first."""
    if kind not in META_FEATURES:
        raise ValueError(f"meta-model features must be one of {META_FEATURES}, got {kind!r}")
    missing = [name for name in model_names if name not in probas]
    if missing:
        raise ValueError(f"missing base-model predictions for {missing}")
    columns = [np.asarray(probas[name], np.float64) for name in model_names]
    binary = columns[0].shape[1] == 2
    if kind == "log_odds":
        columns = [np.clip(p, PROBA_CLIP, 1.0 - PROBA_CLIP) for p in columns]
        if binary:
            return np.hstack([np.log(p[:, 1:]) - np.log(p[:, :1]) for p in columns])
        return np.hstack([np.log(p) for p in columns])
    if binary:
        columns = [p[:, 1:] for p in columns]
    return np.hstack(columns)


class StackingMetaModel:
    """Logistic regression on out-of-fold base predictions (``features``: their log-odds or probabilities, see
    :func:`stack_features`), its C chosen by inner stratified CV (mean held-out log loss, first of equals in the
    order of ``Cs``, as scikit-learn's ``GridSearchCV``). Every inner fold fits the Cs as one regularisation path,
    from the smallest C up, each fit starting from the previous solution."""

    def __init__(self, Cs: list[float], inner_folds: int = 5, seed: int = 0, features: str = "log_odds"):
        if features not in META_FEATURES:
            raise ValueError(f"meta-model features must be one of {META_FEATURES}, got {features!r}")
        self.Cs = Cs
        self.inner_folds = inner_folds
        self.seed = seed
        self.features = features

    def features_of(self, probas: Mapping[str, np.ndarray], model_names: list[str] | None = None) -> np.ndarray:
        """The matrix this meta-model reads (pickles from before ``features`` existed stacked probabilities)."""
        names = self.model_names_ if model_names is None else model_names
        return stack_features(probas, names, getattr(self, "features", "probabilities"))

    def _n_folds(self, y: np.ndarray) -> int:
        folds = min(self.inner_folds, int(np.bincount(y)[np.bincount(y) > 0].min()))
        if folds < 2:
            raise ValueError(f"the meta-model's inner CV needs 2+ samples per class, OOF class counts {np.bincount(y).tolist()}")
        return folds

    def _select(self, x: np.ndarray, y: np.ndarray, folds: int) -> tuple[np.ndarray, LogisticRegression]:
        """(mean held-out negative log loss per C over ``folds`` stratified folds, the model refitted on all rows
        at the best C)."""
        inner = StratifiedKFold(folds, shuffle=True, random_state=self.seed)
        scores = np.mean([_path_scores(x[tr], y[tr], x[te], y[te], self.Cs) for tr, te in inner.split(x, y)], axis=0)
        best = LogisticRegression(C=float(self.Cs[int(np.argmax(scores))]), solver=SOLVER)
        return scores, best.fit(x, y)

    def fit(self, oof_probas: Mapping[str, np.ndarray], y: np.ndarray) -> "StackingMetaModel":
        y = np.asarray(y)
        self.model_names_ = list(oof_probas)
        scores, self.estimator_ = self._select(self.features_of(oof_probas), y, self._n_folds(y))
        self.best_C_ = float(self.estimator_.C)
        self.cv_results_ = {str(c): float(s) for c, s in zip(self.Cs, scores)}
        return self

    def cross_val_proba(self, oof_probas: Mapping[str, np.ndarray], y: np.ndarray) -> np.ndarray:
        """Honest out-of-fold meta predictions: each row from a meta-model (C re-tuned inside) that never saw it."""
        y = np.asarray(y)
        folds = self._n_folds(y)
        features = self.features_of(oof_probas, list(oof_probas))
        out = np.zeros((len(y), len(np.unique(y))))
        for train, held_out in StratifiedKFold(folds, shuffle=True, random_state=self.seed + 1).split(features, y):
            _, model = self._select(features[train], y[train], folds)
            out[held_out] = model.predict_proba(features[held_out])
        return out

    def predict_proba(self, probas: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.estimator_.predict_proba(self.features_of(probas))

    def predict_proba_per_fold(self, probas_by_fold: Mapping[str, Sequence[np.ndarray]]) -> np.ndarray:
        """Mean over folds k of the meta-model applied to the fold-k models of every strategy.

        The meta-model learned from out-of-fold probabilities of single fold models; the mean of K fold models is
        a smoother input it never saw, so it is applied per fold (the same kind of input) and the outputs averaged.
        """
        counts = {name: len(probas_by_fold[name]) for name in self.model_names_}
        if len(set(counts.values())) != 1 or not min(counts.values()):
            raise ValueError(f"per-fold stacking needs the same number (>= 1) of fold predictions per model, got {counts}")
        n_folds = next(iter(counts.values()))
        return np.mean(
            [self.predict_proba({name: probas_by_fold[name][k] for name in self.model_names_}) for k in range(n_folds)],
            axis=0,
        )

    @property
    def coefficients(self) -> dict[str, list[float]]:
        """Meta-model weights per base-model feature column (readable in the report)."""
        coef = self.estimator_.coef_
        per_model = np.split(coef, len(self.model_names_), axis=1)
        return {name: block.ravel().round(4).tolist() for name, block in zip(self.model_names_, per_model)}

    def save(self, path: str | Path) -> None:
        joblib.dump(self, path)

    @staticmethod
    def load(path: str | Path) -> "StackingMetaModel":
        """Unpickle a meta-model. Pickles can run code: only load files from a run folder medstack wrote."""
        obj = joblib.load(path)
        if not isinstance(obj, StackingMetaModel):
            raise TypeError(f"{path} does not hold a StackingMetaModel")
        return obj


def _path_scores(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 Cs: Sequence[float]) -> np.ndarray:
    """Negative held-out log loss at every C (in the order of ``Cs``) of one inner fold: one regularisation path,
    fitted from the smallest C up, each fit starting from the previous solution (``warm_start``)."""
    model = LogisticRegression(solver=SOLVER, warm_start=True)
    scores = np.empty(len(Cs))
    for i in np.argsort(Cs, kind="stable"):
        model.set_params(C=float(Cs[i])).fit(x_train, y_train)
        scores[i] = -log_loss(y_test, model.predict_proba(x_test), labels=model.classes_)
    return scores
