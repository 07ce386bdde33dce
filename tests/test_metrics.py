import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from medstack.models.metrics import (
    METRIC_KEYS, bootstrap_ci, choose_threshold, compute_metrics, metrics_table, paired_auc_difference, predict_labels,
    pr_auc_of_resamples, roc_auc_of_resamples,
)

# 10 samples, positive class 1. Scores and labels:
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
S = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.1, 0.05])
P = np.column_stack([1 - S, S])


def test_binary_metrics_by_hand():
    # threshold 0.5 -> predicted positive: 0.9, 0.8, 0.6 (true) and 0.7 (false)
    # TP=3 FN=1 FP=1 TN=5; precision 3/4, recall 3/4, specificity 5/6, F1 0.75
    # MCC = (3*5 - 1*1) / sqrt(4*4*6*6) = 14/24; accuracy 8/10; balanced (0.75 + 5/6) / 2
    # Brier = mean((s - y)^2) = (0.01+0.04+0.16+0.49+0.49+0.16+0.04+0.01+0.01+0.0025)/10 = 0.14125
    m = compute_metrics(Y, P, 0.5)
    assert set(METRIC_KEYS) <= set(m)
    assert m["confusion_matrix"] == [[5, 1], [1, 3]]
    assert m["precision"] == pytest.approx(0.75) and m["recall"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(5 / 6) and m["f1"] == pytest.approx(0.75)
    assert m["mcc"] == pytest.approx(14 / 24) and m["accuracy"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 5 / 6) / 2)
    assert m["brier"] == pytest.approx(0.14125)
    # ROC AUC: of 24 (pos, neg) pairs, (0.6 vs 0.7), (0.3 vs 0.7), (0.3 vs 0.4) are mis-ordered -> 21/24
    assert m["roc_auc"] == pytest.approx(21 / 24)
    assert m["per_class"]["0"]["support"] == 6 and m["threshold"] == 0.5


def test_positive_class_zero_swaps_roles():
    m = compute_metrics(1 - Y, P[:, ::-1], 0.5, positive_class=0)
    assert m["recall"] == pytest.approx(0.75) and m["specificity"] == pytest.approx(5 / 6)
    assert predict_labels(P[:, ::-1], 0.5, positive_class=0).tolist() == (1 - predict_labels(P, 0.5)).tolist()


def test_threshold_policies():
    # sensitivity >= 0.75 needs 3 of 4 positives: the highest such threshold is 0.6.
    assert choose_threshold(Y, P, "sensitivity", target_sensitivity=0.75) == pytest.approx(0.6)
    # full sensitivity needs 0.3
    assert choose_threshold(Y, P, "sensitivity", target_sensitivity=1.0) == pytest.approx(0.3)
    # F1: t=0.3 -> TP4 FP2 -> P 2/3, R 1 -> 0.8; t=0.6 -> TP3 FP1 -> 0.75; t=0.8 -> TP2 FP0 -> 0.667
    assert choose_threshold(Y, P, "f1") == pytest.approx(0.3)
    # Youden: t=0.3 -> 1 - 2/6 = 0.667; t=0.6 -> 0.75 - 1/6 = 0.583; t=0.8 -> 0.5 - 0 = 0.5
    assert choose_threshold(Y, P, "youden") == pytest.approx(0.3)


def test_threshold_errors_and_multiclass():
    with pytest.raises(ValueError, match="unknown threshold policy 'best'"):
        choose_threshold(Y, P, "best")
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.ones(10, int), P, "f1")
    assert choose_threshold(np.array([0, 1, 2]), np.eye(3), "f1") is None


def test_multiclass_macro_matches_sklearn(rng):
    y = rng.integers(0, 3, 200)
    p = rng.dirichlet([1, 1, 1], 200)
    p[np.arange(200), y] += 0.5
    p /= p.sum(axis=1, keepdims=True)
    m = compute_metrics(y, p, None, class_names=["a", "b", "c"])
    assert m["f1"] == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
    assert m["threshold"] is None and set(m["per_class"]) == {"a", "b", "c"}
    assert sum(v["support"] for v in m["per_class"].values()) == 200
    assert 0.5 < m["roc_auc"] <= 1.0


def test_single_class_truth_gives_nan_auc():
    m = compute_metrics(np.ones(4, int), np.tile([0.3, 0.7], (4, 1)), 0.5)
    assert math.isnan(m["roc_auc"]) and math.isnan(m["pr_auc"])


def test_bootstrap_interval_contains_estimate_and_is_deterministic(rng):
    y = rng.integers(0, 2, 300)
    s = np.clip(0.35 * y + 0.65 * rng.random(300), 0, 1)
    p = np.column_stack([1 - s, s])
    point = compute_metrics(y, p, 0.5)
    ci = bootstrap_ci(y, p, 0.5, n_boot=300, seed=1)
    assert set(ci) == {"accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc", "mcc", "brier"}
    for key, (lo, hi) in ci.items():
        assert lo <= point[key] <= hi, key
        assert hi - lo < 0.3, key
    assert bootstrap_ci(y, p, 0.5, n_boot=300, seed=1) == ci
    assert bootstrap_ci(y, p, 0.5, n_boot=0) == {}


def test_metrics_table_orders_by_roc_auc():
    results = {
        "weak": {"test": compute_metrics(Y, np.column_stack([1 - S[::-1], S[::-1]]), 0.5)},
        "strong": {"test": compute_metrics(Y, P, 0.5)},
    }
    table = metrics_table(results)
    assert list(table.index) == ["strong", "weak"] and "confusion_matrix" not in table.columns


def test_paired_auc_difference_cancels_what_both_models_share(rng):
    y = rng.integers(0, 2, 400)
    s = np.clip(0.3 * y + 0.7 * rng.random(400), 0, 1)
    a = np.column_stack([1 - s, s])
    same = paired_auc_difference(y, a, a.copy(), n_boot=200)
    assert same["difference"] == 0 and same["ci"] == (0.0, 0.0) and same["b_not_better"] == 1.0
    # B ranks every positive a little higher: better on every resample, by exactly the AUC difference on the rows.
    t = np.clip(s + 0.05 * y, 0, 1)
    b = np.column_stack([1 - t, t])
    out = paired_auc_difference(y, a, b, n_boot=200, seed=3)
    assert out["difference"] == pytest.approx(roc_auc_score(y, t) - roc_auc_score(y, s))
    assert 0 < out["ci"][0] <= out["difference"] <= out["ci"][1] and out["b_not_better"] == 0.0
    # The paired interval of the difference is far narrower than either model's own interval.
    own = bootstrap_ci(y, b, 0.5, n_boot=200, seed=3, keys=("roc_auc",))["roc_auc"]
    assert out["ci"][1] - out["ci"][0] < (own[1] - own[0]) / 3
    assert paired_auc_difference(y, a, b, n_boot=200, seed=3) == out


def test_paired_auc_difference_rejects_unpaired_predictions(rng):
    y = rng.integers(0, 2, 50)
    p = np.tile([0.4, 0.6], (50, 1))
    with pytest.raises(ValueError, match="cannot pair"):
        paired_auc_difference(y, p, p[:49])


def test_resampled_roc_auc_is_scikit_learns_on_every_resample(rng):
    # Binary, tied scores (rounded), a column 0 that is not 1 - column 1, and a resample holding one class only.
    y = rng.integers(0, 2, 40)
    s = np.round(np.clip(0.3 * y + 0.7 * rng.random(40), 0, 1), 1)
    p = np.column_stack([np.round(rng.random(40), 1), s])
    idx = rng.integers(0, 40, (6, 40))
    idx[5] = np.flatnonzero(y == 1)[0]
    for positive in (0, 1):
        got = roc_auc_of_resamples(y, p, idx, positive)
        assert got[:5] == pytest.approx([roc_auc_score(y[i] == positive, p[i, positive]) for i in idx[:5]])
        assert np.isnan(got[5])
    # Three classes: the macro one-vs-rest average; NaN where a class is missing; NaN throughout for a NaN input.
    y3 = rng.integers(0, 3, 60)
    p3 = rng.dirichlet([1, 1, 1], 60)
    p3[np.arange(60), y3] += 0.4
    p3 /= p3.sum(axis=1, keepdims=True)
    idx3 = rng.integers(0, 60, (4, 60))
    idx3[3] = np.flatnonzero(y3 != 2)[rng.integers(0, np.sum(y3 != 2), 60)]
    got3 = roc_auc_of_resamples(y3, p3, idx3)
    assert got3[:3] == pytest.approx([roc_auc_score(y3[i], p3[i], multi_class="ovr", average="macro") for i in idx3[:3]])
    assert np.isnan(got3[3])
    p3[7, 1] = np.nan
    assert np.isnan(roc_auc_of_resamples(y3, p3, idx3)).all()


def test_resampled_pr_auc_is_compute_metrics_on_every_resample(rng):
    # Tied scores (rounded), binary for either positive class and 4 classes (a class missing from some resamples:
    # the mean over the classes a resample holds), a resample holding one class only, and a NaN input.
    for k in (2, 4):
        y = rng.integers(0, k, 50)
        p = rng.dirichlet(np.ones(k), 50)
        p[np.arange(50), y] += 0.3
        p = np.round(p / p.sum(axis=1, keepdims=True), 1)
        idx = rng.integers(0, 50, (8, 50))
        idx[6] = np.flatnonzero(y != k - 1)[rng.integers(0, np.sum(y != k - 1), 50)]
        idx[7] = np.flatnonzero(y == 1)[0]
        for positive in (0, 1):
            got = pr_auc_of_resamples(y, p, idx, positive)
            want = [compute_metrics(y[i], p[i], None, positive)["pr_auc"] for i in idx[:7]]
            assert got[:7] == pytest.approx(want, abs=1e-12, nan_ok=True)
            assert np.isnan(got[7])
        p[3, 0] = np.nan
        assert np.isnan(pr_auc_of_resamples(y, p, idx)).all()


@pytest.mark.parametrize("labels, a, n_boot, message", [
    (np.ones(20, int), np.full((20, 2), 0.5), 100, "no resample holds every class"),
    (np.arange(20) % 2, np.full((20, 2), np.nan), 100, "non-finite probabilities"),
    (np.arange(20) % 2, np.full((20, 2), 0.5), 0, "n_boot >= 1"),
])
def test_paired_auc_difference_says_why_it_cannot(labels, a, n_boot, message):
    with pytest.raises(ValueError, match=message):
        paired_auc_difference(labels, a, np.full((20, 2), 0.5), n_boot=n_boot)
