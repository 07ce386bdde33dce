"""Decision policies: how one model's class probabilities become one label, chosen on OOF predictions only.

A decision is a small JSON-able dict, so it travels into ``metrics.json``, the report and later predictions as is:

* binary: ``{"kind": "threshold", "threshold": t, "positive_class": p}``, positive where P(p) >= t; ``t`` from the
  ``f1``, ``youden`` or ``sensitivity`` policy (:func:`medstack.models.metrics.choose_threshold`).
* multi-class: ``{"kind": "argmax"}``, or ``{"kind": "offsets", "offsets": [b_0, ..., b_K-1]}``: the label is
  ``argmax_k(log p_k + b_k)``. Argmax of an imbalanced model's probabilities favours the majority class; the
  offsets (a per-class prior correction) are chosen to maximise balanced accuracy on the OOF predictions, then
  raised for every class the config names as critical until its OOF recall reaches the target, where it can.

Nothing here sees val or test labels: the caller passes OOF rows, and the chosen decision is applied unchanged to
test and to new images.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from medstack.models.metrics import choose_threshold, predict_labels

_LOG_FLOOR = 1e-12  # log(0) guard: a probability of exactly 0 stays the least likely, not -inf
_GRID = np.linspace(-4.0, 4.0, 81)  # candidate offsets in log-probability units (a factor of e^4 either way)
_SWEEPS = 3  # coordinate-ascent passes over the classes; more never changed the result on the data we tried


def choose_decision(
    y_true: np.ndarray,
    proba: np.ndarray,
    *,
    threshold_policy: str,
    positive_class: int = 1,
    target_sensitivity: float = 0.9,
    multiclass_policy: str = "balanced_accuracy",
    critical_recall: Mapping[int, float] | None = None,
) -> dict[str, Any]:
    """The decision a policy prefers on (``y_true``, ``proba``), which must be out-of-fold predictions."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape[1] == 2:
        threshold = choose_threshold(y_true, proba, threshold_policy, positive_class=positive_class,
                                     target_sensitivity=target_sensitivity)
        return {"kind": "threshold", "threshold": threshold, "positive_class": int(positive_class)}
    if multiclass_policy == "argmax":
        return {"kind": "argmax"}
    if multiclass_policy != "balanced_accuracy":
        raise ValueError(f"unknown multi-class policy {multiclass_policy!r}; choose argmax or balanced_accuracy")
    offsets = balanced_offsets(y_true, proba, critical_recall or {})
    return {"kind": "offsets", "offsets": [round(float(b), 4) for b in offsets]}


def apply_decision(proba: np.ndarray, decision: Mapping[str, Any]) -> np.ndarray:
    """Integer labels of ``proba`` (N, K) under ``decision``."""
    kind = decision.get("kind")
    if kind == "threshold":
        return predict_labels(proba, decision["threshold"], int(decision.get("positive_class", 1)))
    if kind == "offsets":
        return predict_labels(proba, None, offsets=decision["offsets"])
    if kind == "argmax":
        return np.asarray(proba).argmax(axis=1)
    raise ValueError(f"unknown decision kind {kind!r} in {dict(decision)}")


def describe_decision(decision: Mapping[str, Any] | None, class_names: Sequence[str]) -> str:
    """One short line for tables: ``threshold 0.43``, ``argmax``, ``offsets melanoma +1.20, nevus -0.40``."""
    if not decision:
        return "n/a"
    if decision["kind"] == "threshold":
        t = decision["threshold"]
        return "threshold n/a" if t is None else f"threshold {t:.3f}"
    if decision["kind"] == "offsets":
        shown = [f"{name} {b:+.2f}" for name, b in zip(class_names, decision["offsets"]) if abs(b) >= 0.005]
        return "offsets " + (", ".join(shown) if shown else "none (argmax)")
    return "argmax"


def balanced_offsets(y_true: np.ndarray, proba: np.ndarray, critical_recall: Mapping[int, float]) -> np.ndarray:
    """Per-class log-probability offsets maximising balanced accuracy (coordinate ascent on a grid, class 0 fixed
    at 0 since only differences matter), then raised for critical classes until their recall reaches the target.

    Ties keep the offset closest to 0, so a model whose argmax is already balanced keeps argmax."""
    y_true = np.asarray(y_true, dtype=np.int64)
    logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), _LOG_FLOOR, None))
    k = logp.shape[1]
    support = np.bincount(y_true, minlength=k)
    present = support > 0
    offsets = np.zeros(k)
    order = np.argsort(np.abs(_GRID), kind="stable")  # ties: the smallest |offset| wins
    for _ in range(_SWEEPS):
        before = offsets.copy()
        for c in range(1, k):
            hits = _hits_along_grid(logp, y_true, offsets, c)
            values = np.array([np.mean(h[present] / support[present]) for h in hits])
            best = order[np.argmax(values[order])]
            offsets[c] = _GRID[best]
        if np.array_equal(before, offsets):
            break
    for c, target in critical_recall.items():
        offsets = _raise_until_recall(logp, y_true, offsets, int(c), float(target))
    return offsets - offsets[0]


def _hits_along_grid(logp: np.ndarray, y_true: np.ndarray, offsets: np.ndarray, c: int) -> np.ndarray:
    """(len(_GRID), K) correct predictions per class of ``argmax(logp + offsets)`` with class ``c``'s offset set to
    each grid value, all at once: a row goes to ``c`` when ``logp_c + g`` beats its best rival (ties to the lower
    index, as ``np.argmax``), else to that rival, which does not depend on ``g``."""
    rivals = logp + offsets
    rivals[:, c] = -np.inf
    rival = rivals.argmax(axis=1)
    best_rival = rivals[np.arange(len(rival)), rival]
    value = logp[:, c] + _GRID[:, None]  # (grid, N), the same sums as logp + offsets
    to_c = (value > best_rival) | ((value == best_rival) & (c < rival))
    right_rival = np.eye(logp.shape[1])[y_true] * (rival == y_true)[:, None]
    hits = np.rint((~to_c).astype(np.float64) @ right_rival).astype(np.int64)
    hits[:, c] = to_c[:, y_true == c].sum(axis=1)
    return hits


def _raise_until_recall(logp: np.ndarray, y_true: np.ndarray, offsets: np.ndarray, c: int, target: float) -> np.ndarray:
    """The smallest increase of class ``c``'s offset that brings its recall to ``target`` (or the grid's end)."""
    rows = y_true == c
    if not rows.any():
        return offsets
    for step in np.linspace(0.0, 2 * _GRID[-1], 161):
        trial = offsets.copy()
        trial[c] += step
        if np.mean(np.argmax(logp[rows] + trial, axis=1) == c) >= target - 1e-12:
            return trial
    return trial
