"""Class-conditional (Mondrian) conformal prediction sets on a model's precomputed class probabilities.

What a prediction set is. For an image x and a level such as 95%, the set holds every class the calibration data
cannot rule out at that level. With a ``split`` calibration (below) the guarantee is, for every class y separately:

    P(y is in the set of x | the true class of x is y) >= 95%,

over the draw of the calibration rows and of the new image, provided the new image comes from the same population
as the calibration rows (exchangeable with them). It is a statement about the long-run share of class-y images
whose set holds y, not about one image, and it says nothing about images from another hospital or scanner (that is
what external validation measures). "Class-conditional" (Mondrian) means each class is calibrated only against its
own calibration rows, so a rare class gets its own 95% instead of borrowing the majority's.

The nonconformity score of class y for image x is ``s(x, y) = 1 - p_y(x)``, rounded to :data:`SCORE_DECIMALS`
(the "LAC" or "hinge" score: Sadinle, Lei and Wasserman, 2019, show it gives the smallest average sets among
class-conditional set predictors when the probabilities are right). Rounding is monotone, so the rounded score is
still a valid score and the guarantee is untouched; rounding only creates ties, and ties count against the image
(below), which can only add classes. Rounding makes model.json small and its sets reproducible to the bit.

The p-value of class y for image x, from the n_y calibration scores s_i of class-y rows, is

    p_y(x) = (#{i : s_i >= s(x, y)} + 1) / (n_y + 1),

the non-randomised (conservative) form: it is a rank, the share of class-y calibration images that looked at least
as unlike class y as x does. The set at level 1 - a is ``{y : p_y(x) > a}``. A smoothed p-value (ties split by a
uniform random number) would make the coverage exactly 1 - a instead of at least 1 - a, but the same image could get
different sets on two calls; a clinical tool must not, so it is not used. With continuous scores the coverage of the
non-randomised form is also at most 1 - a + 1 / (n_y + 1).

Too few calibration rows. The smallest p-value class y can reach is 1 / (n_y + 1), so y can be left out of a set at
level 1 - a only when n_y >= :func:`min_count` = ceil((1 - a) / a) (9 rows for 90%, 19 for 95%). Below that, y is in
every set at that level: its coverage is a trivial 100% and the set says nothing about y. The policy here is to
refuse that level for that class and say so: the class is marked unavailable at that level (``unavailable`` in the
serialised form), it stays in every set (the sets remain valid, never silently smaller), and a report must show
"not available" for its coverage instead of a nominal promise.

An empty set means no class is plausible at that level: every class's p-value is at most a, the image looks unlike
the calibration images of every class (an atypical or out-of-distribution image, or a rare event of probability at
most a for an in-distribution one). It is shown as ``{}`` (:func:`format_set`) and is a reason to refer the case
(see :mod:`medstack.models.referral`).

Two kinds of calibration, and what each promises:

* ``split``: the calibration rows are a held-out slice the deployed model (the K-fold average, the stack) never
  learned from, not even for early stopping or the meta-model. The guarantee above holds exactly for that model.
* ``oof``: the calibration scores are out-of-fold predictions, each from the fold model that did not train on the
  row. They cost no data, but they calibrate the fold models, not their average or the stack fitted on them, so no
  nominal level is promised for the deployed model: label these sets "empirical coverage" and show the coverage
  measured on test. (Cross-conformal prediction, which averages p-values over the folds, has a proven bound of only
  about 1 - 2a, and it too covers the fold models, not their average.)

Everything is plain NumPy over (N, K) probabilities, with no model in sight, so it works for any member, the soft
vote or the stack alike. :meth:`ConformalCalibration.to_dict` is plain JSON numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.stats import beta

SCORE_DECIMALS = 6  # scores 1 - p rounded to 1e-6: model.json stays small, sets are exact after a JSON round trip
DEFAULT_LEVELS = (0.9, 0.95)
KINDS = ("split", "oof")
SCORE_NAME = "1 - p(class), rounded to 6 decimals"


def alpha_of(level: float) -> float:
    """The miscoverage a = 1 - level, rounded to 10 decimals so that 1 - 0.9 is the float 0.1 (and a p-value of
    exactly 1/10 compares as equal to it, not as larger)."""
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"a conformal level must lie strictly between 0 and 1, got {level}")
    return round(1.0 - level, 10)


def min_count(level: float) -> int:
    """The fewest calibration rows of a class that let the class be left out of a set at ``level``:
    ceil((1 - a) / a), i.e. the smallest n with 1 / (n + 1) <= a (9 for 90%, 19 for 95%)."""
    return math.ceil(round(1.0 / alpha_of(level), 9)) - 1


def nonconformity(proba: np.ndarray) -> np.ndarray:
    """The (N, K) scores ``1 - p`` of every class, rounded to :data:`SCORE_DECIMALS`."""
    proba = _check_proba(proba)
    return np.round(1.0 - proba, SCORE_DECIMALS)


def _excludable(level: float, n: np.ndarray) -> np.ndarray:
    """Per class, k = floor(a (n + 1)): class y leaves the set when fewer than k calibration scores are >= its
    score. Integer arithmetic (rounded before the floor) keeps 0.1 * 10 from becoming 0.99999."""
    a = alpha_of(level)
    return np.floor(np.round(a * (np.asarray(n) + 1), 9)).astype(np.int64)


@dataclass(frozen=True)
class ConformalCalibration:
    """Per-class sorted calibration scores of one model, the levels and the kind (``split`` or ``oof``)."""

    kind: str
    levels: tuple[float, ...]
    scores: tuple[np.ndarray, ...]  # class k's calibration scores, ascending, rounded to SCORE_DECIMALS

    @property
    def n_classes(self) -> int:
        return len(self.scores)

    @property
    def counts(self) -> np.ndarray:
        """(K,) calibration rows per class."""
        return np.array([len(s) for s in self.scores], dtype=np.int64)

    def available(self, level: float) -> np.ndarray:
        """(K,) whether each class has enough calibration rows for ``level`` (:func:`min_count`)."""
        return self.counts >= min_count(level)

    def unavailable(self, level: float) -> list[int]:
        """Classes refused at ``level``: always in the set, no coverage promised or reported."""
        return [int(k) for k in np.flatnonzero(~self.available(level))]

    def _at_least(self, proba: np.ndarray) -> np.ndarray:
        """(N, K) count of class-k calibration scores >= the image's class-k score."""
        s = nonconformity(proba)
        if s.shape[1] != self.n_classes:
            raise ValueError(f"calibrated for {self.n_classes} classes, got probabilities of {s.shape[1]}")
        return np.stack([len(cal) - np.searchsorted(cal, s[:, k], side="left")
                         for k, cal in enumerate(self.scores)], axis=1)

    def p_values(self, proba: np.ndarray) -> np.ndarray:
        """(N, K) conformal p-values ``(#{cal scores of class k >= s(x, k)} + 1) / (n_k + 1)``."""
        return (self._at_least(proba) + 1) / (self.counts + 1)

    def prediction_sets(self, proba: np.ndarray, level: float) -> np.ndarray:
        """(N, K) booleans: class k is in the set of image i at ``level`` (p-value > 1 - level). A class with too
        few calibration rows is in every set (its smallest p-value exceeds 1 - level)."""
        self._check_level(level)
        return self._at_least(proba) >= _excludable(level, self.counts)

    def score_thresholds(self, level: float) -> list[float | None]:
        """Per class, the largest score that keeps the class in the set at ``level`` (class k is in the set iff
        ``round(1 - p_k, 6) <= threshold``): the k-th largest calibration score, k = floor(a (n + 1)); None for a
        class refused at that level (always in the set)."""
        out: list[float | None] = []
        for cal, k in zip(self.scores, _excludable(level, self.counts)):
            out.append(float(cal[len(cal) - k]) if k >= 1 else None)
        return out

    def guarantee(self, level: float) -> str:
        """One sentence saying what holds at ``level`` for these sets, and for which classes."""
        pct = format_level(level)
        refused = self.unavailable(level)
        gap = (f"; classes {refused} have fewer than {min_count(level)} calibration rows and are in every set"
               if refused else "")
        if self.kind == "split":
            return (f"split conformal: for each class, at least {pct} of its images have that class in their {pct} "
                    f"set (held-out calibration, exchangeable images){gap}")
        return (f"empirical coverage only: calibrated on out-of-fold predictions of the fold models, not on the "
                f"deployed model; no {pct} promise, see the measured coverage{gap}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON numbers: kind, levels, counts, the sorted scores and, per level, the minimum count, the
        refused classes and the score thresholds (derived, for readers; :meth:`from_dict` checks them)."""
        return {
            "kind": self.kind,
            "score": SCORE_NAME,
            "decimals": SCORE_DECIMALS,
            "levels": list(self.levels),
            "counts": self.counts.tolist(),
            "scores": [s.tolist() for s in self.scores],
            "per_level": [{"level": lv, "min_count": min_count(lv), "unavailable": self.unavailable(lv),
                           "score_thresholds": self.score_thresholds(lv)} for lv in self.levels],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConformalCalibration:
        """The calibration :meth:`to_dict` wrote; a file whose derived fields disagree with its scores is refused."""
        if data.get("decimals") != SCORE_DECIMALS:
            raise ValueError(f"conformal calibration rounded to {data.get('decimals')} decimals, "
                             f"expected {SCORE_DECIMALS}")
        scores = tuple(np.asarray(s, dtype=np.float64) for s in data["scores"])
        out = _build(data["kind"], data["levels"], scores)
        if [len(s) for s in scores] != list(data["counts"]):
            raise ValueError(f"conformal calibration counts {data['counts']} do not match its scores")
        if list(data.get("per_level", [])) != out.to_dict()["per_level"]:
            raise ValueError("conformal calibration per_level fields do not match its scores (edited by hand?)")
        return out

    def _check_level(self, level: float) -> None:
        if not any(math.isclose(level, lv) for lv in self.levels):
            raise ValueError(f"level {level} was not calibrated; calibrated levels: {list(self.levels)}")


def fit_conformal(y: np.ndarray, proba: np.ndarray, *, kind: str,
                  levels: Sequence[float] = DEFAULT_LEVELS) -> ConformalCalibration:
    """Calibrate on rows (``y``, ``proba``): for ``kind="split"`` rows the deployed model never learned from, for
    ``kind="oof"`` out-of-fold predictions (empirical coverage only, see the module docstring)."""
    s = nonconformity(proba)
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(s) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"fit_conformal needs N integer labels for (N, K) probabilities, got {y.shape} {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= s.shape[1]):
        raise ValueError(f"labels must lie in 0..{s.shape[1] - 1}, got {y.min()}..{y.max()}")
    scores = tuple(np.sort(s[y == k, k]) for k in range(s.shape[1]))
    return _build(kind, levels, scores)


def _build(kind: str, levels: Sequence[float], scores: tuple[np.ndarray, ...]) -> ConformalCalibration:
    if kind not in KINDS:
        raise ValueError(f"unknown conformal calibration kind {kind!r}; choose one of {KINDS}")
    levels = tuple(float(lv) for lv in levels)
    for lv in levels:
        alpha_of(lv)
    if not levels or len(set(levels)) != len(levels):
        raise ValueError(f"conformal levels must be distinct and at least one, got {list(levels)}")
    if len(scores) < 2:
        raise ValueError(f"conformal calibration needs at least 2 classes, got {len(scores)}")
    for k, cal in enumerate(scores):
        if cal.ndim != 1 or np.any(np.diff(cal) < 0) or not np.isfinite(cal).all():
            raise ValueError(f"calibration scores of class {k} must be finite and sorted ascending")
    return ConformalCalibration(kind=kind, levels=levels, scores=scores)


def _check_proba(proba: np.ndarray) -> np.ndarray:
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] < 2:
        raise ValueError(f"expected (N, K) class probabilities with K >= 2, got shape {proba.shape}")
    if not np.isfinite(proba).all() or proba.min(initial=0) < 0 or proba.max(initial=0) > 1:
        raise ValueError("class probabilities must be finite and within [0, 1]")
    return proba


def format_level(level: float) -> str:
    """``0.95`` -> ``"95%"``, ``0.975`` -> ``"97.5%"``."""
    return f"{round(level * 100, 6):g}%"


def format_set(members: np.ndarray, class_names: Sequence[str]) -> str:
    """One image's set as text: ``{}`` (empty: no class plausible), ``{pneumonia}``, ``{normal, pneumonia}``."""
    return "{" + ", ".join(name for name, inside in zip(class_names, members) if inside) + "}"


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval for a binomial proportion; (0, 1) when ``trials`` is 0."""
    if trials == 0:
        return 0.0, 1.0
    tail = (1.0 - confidence) / 2
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - tail, successes + 1, trials - successes))
    return low, high


def coverage_by_class(y: np.ndarray, sets: np.ndarray, unavailable: Sequence[int] = ()) -> list[dict[str, Any]]:
    """Per class: images, how many had their class in the set, the share and its 95% Clopper-Pearson interval;
    ``available`` False for a class refused at this level (its share is a trivial 1)."""
    y = np.asarray(y)
    rows = []
    for k in range(sets.shape[1]):
        of_k = y == k
        n, covered = int(of_k.sum()), int(sets[of_k, k].sum())
        low, high = clopper_pearson(covered, n)
        rows.append({"class": k, "n": n, "covered": covered, "coverage": covered / n if n else None,
                     "ci_low": low, "ci_high": high, "available": k not in unavailable})
    return rows


def set_summary(sets: np.ndarray) -> dict[str, float]:
    """Mean set size and the shares of single-class and empty sets."""
    size = np.asarray(sets).sum(axis=1)
    return {"mean_size": float(size.mean()), "single": float(np.mean(size == 1)), "empty": float(np.mean(size == 0))}
