"""Which meta-model should stack the base models? Compared on a finished run's out-of-fold predictions only.

Reads `oof_predictions.csv` of a binary run folder (the base models' OOF probabilities and the labels; test is never
read) and scores, by repeated stratified K-fold over those rows, each way of combining the members:

- `stacking on probabilities`: logistic regression on the probabilities, C chosen by inner CV (medstack's
  meta-model with `ensemble.meta_features: probabilities`, its default before this comparison);
- `stacking on logits`: the same on log-odds (a probability of 0.999 and 0.9999 differ there, not on probabilities;
  medstack's default, `ensemble.meta_features: log_odds`);
- `stacking, weights >= 0`: logistic regression on log-odds whose member weights are bounded at zero (a member can
  be ignored, never used upside down); L2 penalty 1/(2C), C chosen by the same inner CV;
- `soft voting`: the plain mean, nothing fitted;
- `best member`: the member with the best OOF ROC AUC on the outer training rows.

    python benchmarks/stacking_variants.py RUN_FOLDER [--repeats 10]

Prints one markdown table: mean and standard deviation over repeats of the held-out ROC AUC and log loss.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, logit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from medstack.run_folder import read_oof_predictions

CS = [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]  # the meta-model's default grid (ensemble.meta_Cs)
EPS = 1e-6


class NonNegativeLogistic(ClassifierMixin, BaseEstimator):
    """Binary logistic regression with coefficients >= 0 (intercept free), L2 penalty 1/(2C), by L-BFGS-B."""

    def __init__(self, C: float = 1.0):
        self.C = C

    def fit(self, x: np.ndarray, y: np.ndarray) -> "NonNegativeLogistic":
        self.classes_ = np.unique(y)
        sign = np.where(y == self.classes_[1], 1.0, -1.0)

        def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
            z = sign * (x @ w[:-1] + w[-1])
            value = np.logaddexp(0.0, -z).sum() + w[:-1] @ w[:-1] / (2 * self.C)
            g = -sign * expit(-z)
            return value, np.append(x.T @ g + w[:-1] / self.C, g.sum())

        bounds = [(0.0, None)] * x.shape[1] + [(None, None)]
        w = minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B", bounds=bounds).x
        self.coef_, self.intercept_ = w[:-1][None, :], w[-1:]
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        p = expit(x @ self.coef_[0] + self.intercept_[0])
        return np.column_stack([1 - p, p])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[(self.predict_proba(x)[:, 1] > 0.5).astype(int)]


def read_oof(run: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(P(positive) per base model as columns, labels, base model names) from a binary run's OOF file."""
    oof = read_oof_predictions(run)
    members = [m for m in oof.probas if m not in ("soft_voting", "stacking")]
    if any(oof.probas[m].shape[1] != 2 for m in members):
        raise SystemExit("stacking_variants compares binary runs only (two probability columns per model)")
    return np.column_stack([oof.probas[m][:, 1] for m in members]), oof.labels.astype(int), members


def searched(estimator: BaseEstimator, seed: int) -> GridSearchCV:
    return GridSearchCV(estimator, {"C": CS}, scoring="neg_log_loss", cv=StratifiedKFold(5, shuffle=True, random_state=seed))


def score(p: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, variant: str, seed: int) -> np.ndarray:
    """Held-out P(positive) of the rows ``test`` for one variant fitted on the rows ``train``."""
    clipped = np.clip(p, EPS, 1 - EPS)
    if variant == "soft voting":
        return p[test].mean(axis=1)
    if variant == "best member":
        aucs = [roc_auc_score(y[train], p[train, j]) for j in range(p.shape[1])]
        return p[test, int(np.argmax(aucs))]
    x = {"stacking on probabilities": p, "stacking on logits": logit(clipped), "stacking, weights >= 0": logit(clipped)}[variant]
    model = NonNegativeLogistic() if variant == "stacking, weights >= 0" else LogisticRegression(max_iter=2000)
    return searched(model, seed).fit(x[train], y[train]).predict_proba(x[test])[:, 1]


VARIANTS = ("stacking on probabilities", "stacking on logits", "stacking, weights >= 0", "soft voting", "best member")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a binary run folder (holds oof_predictions.csv)")
    parser.add_argument("--repeats", type=int, default=10, help="repeats of the outer stratified 5-fold split")
    args = parser.parse_args()
    p, y, members = read_oof(args.run)
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    for repeat in range(args.repeats):
        held_out = {v: np.zeros(len(y)) for v in VARIANTS}
        for train, test in StratifiedKFold(5, shuffle=True, random_state=repeat).split(p, y):
            for v in VARIANTS:
                held_out[v][test] = score(p, y, train, test, v, seed=repeat)
        for v in VARIANTS:
            results[v].append((roc_auc_score(y, held_out[v]), log_loss(y, np.clip(held_out[v], EPS, 1 - EPS))))
    print(f"{args.run}: {len(y)} OOF rows, members {', '.join(members)}, {args.repeats} x stratified 5-fold\n")
    print("| combiner | held-out ROC AUC | held-out log loss |")
    print("|---|---|---|")
    for v in VARIANTS:
        auc, loss = np.array(results[v]).T
        print(f"| {v} | {auc.mean():.4f} ± {auc.std():.4f} | {loss.mean():.4f} ± {loss.std():.4f} |")
    final = searched(NonNegativeLogistic(), 0).fit(logit(np.clip(p, EPS, 1 - EPS)), y)
    weights = ", ".join(f"{m} {w:.3f}" for m, w in zip(members, final.best_estimator_.coef_[0]))
    print(f"\nweights >= 0 on all rows (C={final.best_params_['C']}): {weights}")
    plain = searched(LogisticRegression(max_iter=2000), 0).fit(p, y)
    weights = ", ".join(f"{m} {w:.3f}" for m, w in zip(members, plain.best_estimator_.coef_[0]))
    print(f"medstack's meta-model on all rows (C={plain.best_params_['C']}): {weights}")


if __name__ == "__main__":
    main()
