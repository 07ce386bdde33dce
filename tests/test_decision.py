"""Decision policies chosen on OOF predictions: binary thresholds, multi-class offsets, critical classes."""

import numpy as np
import pytest

from medstack.models.decision import apply_decision, balanced_offsets, choose_decision, describe_decision
from medstack.models.metrics import choose_threshold, compute_metrics


def _imbalanced_three_class(rng, n=(600, 120, 30)):
    """A model that knows the classes but is biased towards the majority: argmax misses most of the rare class."""
    y = np.concatenate([np.full(c, k) for k, c in enumerate(n)])
    logits = rng.normal(0, 1.0, (len(y), 3))
    logits[np.arange(len(y)), y] += 1.5
    logits[:, 0] += 1.8  # prior pull to the majority
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


def _balanced_accuracy(y, labels):
    return float(np.mean([np.mean(labels[y == k] == k) for k in np.unique(y)]))


def test_offsets_raise_balanced_accuracy_over_argmax(rng):
    y, proba = _imbalanced_three_class(rng)
    decision = choose_decision(y, proba, threshold_policy="f1")
    assert decision["kind"] == "offsets" and decision["offsets"][0] == 0.0
    argmax = _balanced_accuracy(y, proba.argmax(axis=1))
    tuned = _balanced_accuracy(y, apply_decision(proba, decision))
    assert tuned > argmax + 0.1  # the bias is large here: argmax's rare-class recall is near 0
    assert decision["offsets"][2] > 0  # the rare class is pushed up


def test_a_calibrated_balanced_model_keeps_argmax(rng):
    y = np.repeat(np.arange(3), 100)
    proba = np.full((300, 3), 0.1)
    proba[np.arange(300), y] = 0.8  # always right at argmax
    assert choose_decision(y, proba, threshold_policy="f1")["offsets"] == [0.0, 0.0, 0.0]


def test_critical_class_reaches_its_recall_target(rng):
    y, proba = _imbalanced_three_class(rng)
    plain = apply_decision(proba, choose_decision(y, proba, threshold_policy="f1"))
    decision = choose_decision(y, proba, threshold_policy="f1", critical_recall={2: 0.95})
    labels = apply_decision(proba, decision)
    assert np.mean(labels[y == 2] == 2) >= 0.95 > np.mean(plain[y == 2] == 2)


def test_argmax_policy_and_binary_thresholds(rng):
    y, proba = _imbalanced_three_class(rng)
    assert choose_decision(y, proba, threshold_policy="f1", multiclass_policy="argmax") == {"kind": "argmax"}
    yb = rng.integers(0, 2, 200)
    pb = np.clip(yb * 0.3 + rng.uniform(0, 0.7, 200), 0, 1)
    pb = np.stack([1 - pb, pb], axis=1)
    decision = choose_decision(yb, pb, threshold_policy="youden", positive_class=1)
    assert decision == {"kind": "threshold", "threshold": choose_threshold(yb, pb, "youden"), "positive_class": 1}
    assert np.array_equal(apply_decision(pb, decision), (pb[:, 1] >= decision["threshold"]).astype(int))


def test_metrics_use_the_offsets(rng):
    y, proba = _imbalanced_three_class(rng)
    decision = choose_decision(y, proba, threshold_policy="f1")
    with_offsets = compute_metrics(y, proba, None, offsets=decision["offsets"])
    assert with_offsets["balanced_accuracy"] == pytest.approx(_balanced_accuracy(y, apply_decision(proba, decision)))
    assert with_offsets["balanced_accuracy"] > compute_metrics(y, proba, None)["balanced_accuracy"]


def test_describe_and_unknown_kinds():
    assert describe_decision({"kind": "threshold", "threshold": 0.4321, "positive_class": 1}, ["a", "b"]) == "threshold 0.432"
    assert describe_decision({"kind": "offsets", "offsets": [0.0, 1.2, -0.4]}, ["n", "m", "b"]) == "offsets m +1.20, b -0.40"
    assert describe_decision({"kind": "argmax"}, ["a", "b", "c"]) == "argmax"
    with pytest.raises(ValueError, match="unknown decision kind 'vote'"):
        apply_decision(np.ones((1, 3)) / 3, {"kind": "vote"})
    with pytest.raises(ValueError, match="unknown multi-class policy"):
        choose_decision(np.array([0, 1, 2]), np.eye(3), threshold_policy="f1", multiclass_policy="max")


def test_balanced_offsets_ignore_absent_classes(rng):
    y, proba = _imbalanced_three_class(rng, n=(50, 20, 0))
    offsets = balanced_offsets(y, proba, {})
    assert offsets.shape == (3,) and np.isfinite(offsets).all()


def _offsets_one_trial_at_a_time(y, proba, sweeps=3):
    """The coordinate ascent scored one grid value at a time by argmax (what balanced_offsets computes at once)."""
    grid = np.linspace(-4.0, 4.0, 81)
    logp = np.log(np.clip(proba, 1e-12, None))
    k = logp.shape[1]
    support = np.bincount(y, minlength=k)
    present = support > 0
    order = np.argsort(np.abs(grid), kind="stable")
    offsets = np.zeros(k)
    for _ in range(sweeps):
        before = offsets.copy()
        for c in range(1, k):
            values = []
            for g in grid:
                trial = offsets.copy()
                trial[c] = g
                hits = np.bincount(y[np.argmax(logp + trial, axis=1) == y], minlength=k)
                values.append(np.mean(hits[present] / support[present]))
            offsets[c] = grid[order[np.argmax(np.asarray(values)[order])]]
        if np.array_equal(before, offsets):
            break
    return offsets - offsets[0]


@pytest.mark.parametrize("k", [3, 5])
def test_balanced_offsets_equal_scoring_every_grid_value_by_argmax(rng, k):
    # Rounded probabilities give exact ties between classes (argmax takes the lower index) and zeros (the floor).
    for _ in range(4):
        y = rng.choice(k, 300, p=np.r_[0.6, np.full(k - 1, 0.4 / (k - 1))])
        p = rng.dirichlet(np.ones(k), 300)
        p[np.arange(300), y] += 0.3
        p = np.round(p / p.sum(axis=1, keepdims=True), 1)
        np.testing.assert_array_equal(balanced_offsets(y, p, {}), _offsets_one_trial_at_a_time(y, p))
