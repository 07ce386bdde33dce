"""Referral (medstack.models.referral): the certainty score, the risk-coverage curve's bookkeeping, operating points
chosen on calibration rows only and applied unchanged, unreachable targets, K > 2."""

import copy
import json

import numpy as np
import pytest

from medstack.models.conformal import fit_conformal
from medstack.models.referral import (
    DEFAULT_FRACTIONS, apply_referral, certainty, choose_referral, kept_metrics, risk_coverage, threshold_for,
)


def _binary(rng, n, prevalence=0.3):
    """A model whose mistakes sit where it is unsure: logit = +-2 plus noise, decision P(1) >= 0.5."""
    y = (rng.random(n) < prevalence).astype(int)
    z = 2.0 * (2 * y - 1) + rng.normal(0, 1.5, n)
    p1 = 1 / (1 + np.exp(-z))
    proba = np.column_stack([1 - p1, p1])
    return y, proba, (p1 >= 0.5).astype(int)


def _three_class(rng, n, signal=2.0):
    y = rng.choice(3, n, p=[0.6, 0.3, 0.1])
    logits = rng.normal(0, 1.2, (n, 3))
    logits[np.arange(n), y] += signal
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba, proba.argmax(axis=1)


def test_certainty_is_one_minus_the_second_largest_p_value_and_matches_the_sets(rng):
    y, proba, _ = _three_class(rng, 400)
    calibration = fit_conformal(y[:250], proba[:250], kind="split")
    p = calibration.p_values(proba[250:])
    cert = certainty(p)
    assert np.array_equal(cert, 1 - np.sort(p, axis=1)[:, 1])
    for lv in (0.9, 0.95):
        at_most_one = calibration.prediction_sets(proba[250:], lv).sum(axis=1) <= 1
        assert np.array_equal(at_most_one, cert >= lv - 1e-12)


def test_risk_coverage_bookkeeping_is_monotone_and_nested(rng):
    y, proba, pred = _binary(rng, 600)
    cert = certainty(fit_conformal(y[:300], proba[:300], kind="split").p_values(proba[300:]))
    rows = risk_coverage(y[300:], pred[300:], cert, n_classes=2, positive_class=1)
    assert [r["target_referral"] for r in rows] == list(DEFAULT_FRACTIONS)
    referred = np.array([r["referred"] for r in rows])
    thresholds = np.array([r["threshold"] for r in rows])
    assert referred[0] == 0 and np.all(np.diff(referred) >= 0) and np.all(np.diff(thresholds) >= 0)
    assert np.all(referred <= np.array(DEFAULT_FRACTIONS) + 1e-12)
    for r, f in zip(rows, DEFAULT_FRACTIONS):
        # the most it can refer: the next distinct certainty would refer more than the target (ties go together)
        above = np.unique(cert)[np.unique(cert) > r["threshold"]]
        assert not len(above) or np.mean(cert < above[0]) > f
    for r in rows:
        kept = cert >= r["threshold"]
        assert r["kept"] == kept.sum() == round(300 * (1 - r["referred"]))
        positives = y[300:][kept] == 1
        assert r["sensitivity"] == pytest.approx(np.mean(pred[300:][kept][positives] == 1))
        assert r["specificity"] == pytest.approx(np.mean(pred[300:][kept][~positives] == 0))
        assert r["balanced_accuracy"] == pytest.approx((r["sensitivity"] + r["specificity"]) / 2)
    # referring the least certain first removes mistakes: kept balanced accuracy at 50% beats keeping all
    assert rows[-1]["balanced_accuracy"] > rows[0]["balanced_accuracy"]


def test_threshold_for_keeps_ties_together():
    cert = np.array([0.1, 0.1, 0.1, 0.5, 0.9])
    assert threshold_for(cert, 0.5) == 0.1  # referring the three tied 0.1s would be 60% > 50%: none referred
    assert threshold_for(cert, 0.6) == 0.5
    assert threshold_for(cert, 1.0) == np.inf


def test_k_above_two_reports_recall_per_class(rng):
    y, proba, pred = _three_class(rng, 900)
    cert = certainty(fit_conformal(y[:450], proba[:450], kind="split").p_values(proba[450:]))
    rows = risk_coverage(y[450:], pred[450:], cert, n_classes=3)
    assert "sensitivity" not in rows[0] and len(rows[0]["recall"]) == 3
    for r in rows:
        kept = cert >= r["threshold"]
        expected = [np.mean(pred[450:][kept & (y[450:] == k)] == k) for k in range(3)]
        assert r["recall"] == pytest.approx(expected)
        assert r["balanced_accuracy"] == pytest.approx(np.mean(expected))


def test_a_class_with_no_kept_image_has_no_recall():
    out = kept_metrics(np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([True, True, False]), 2, positive_class=1)
    assert out["recall"] == [0.5, None] and out["sensitivity"] is None and out["balanced_accuracy"] == 0.5


def test_budget_point_is_chosen_on_calibration_and_applied_unchanged(rng):
    y, proba, pred = _binary(rng, 1400)
    cal, new = slice(0, 700), slice(700, None)
    calibration = fit_conformal(y[cal], proba[cal], kind="split")
    base = kept_metrics(y[cal], pred[cal], np.ones(700, bool), 2, positive_class=1)["sensitivity"]
    rule = {"rule": "certainty", "level": 0.95, "max_referral": 0.3, "target_sensitivity": base + 0.03,
            "target_class": 1}
    point = choose_referral(rule, calibration, y[cal], pred[cal], proba[cal])
    assert point["reached"] is True
    assert point["on_calibration"]["referred"] <= 0.3
    assert point["on_calibration"]["sensitivity"] >= base + 0.03
    saved = json.loads(json.dumps(point))  # plain numbers
    # the smallest such threshold: one step less certain would miss the target
    cert_cal = certainty(calibration.p_values(proba[cal]))
    lower = np.unique(cert_cal)[np.unique(cert_cal) < point["threshold"]]
    if len(lower):
        kept = cert_cal >= lower[-1]
        assert kept_metrics(y[cal], pred[cal], kept, 2, 1)["sensitivity"] < base + 0.03
    # applied to new images: the same threshold, nothing refitted, reasons say why
    before = copy.deepcopy(saved)
    out = apply_referral(saved, calibration, proba[new])
    assert saved == before
    empty = ~calibration.prediction_sets(proba[new], 0.95).any(axis=1)
    assert np.array_equal(out.refer, (out.certainty < saved["threshold"]) | empty)
    shown = [r for r, c in zip(out.reasons, out.certainty) if r and c < saved["threshold"]]
    assert shown and all(r.startswith("certainty ") and " < " in r for r in shown)
    assert all(r == "" for r, refer in zip(out.reasons, out.refer) if not refer)


def test_an_unreachable_sensitivity_keeps_the_budget_and_says_so(rng):
    y, proba, pred = _binary(rng, 700)
    calibration = fit_conformal(y, proba, kind="split")
    rule = {"rule": "certainty", "max_referral": 0.1, "target_sensitivity": 1.0, "target_class": 1}
    point = choose_referral(rule, calibration, y, pred, proba)
    assert point["reached"] is False and point["level"] == 0.95  # the highest calibrated level by default
    assert point["on_calibration"]["referred"] <= 0.1
    assert point["on_calibration"]["sensitivity"] < 1.0
    # it is the best kept sensitivity the budget allows
    cert = certainty(calibration.p_values(proba))
    empty = ~calibration.prediction_sets(proba, 0.95).any(axis=1)
    best = max(kept_metrics(y, pred, ~((cert < t) | empty), 2, 1)["sensitivity"]
               for t in np.append(np.unique(cert), np.inf) if np.mean((cert < t) | empty) <= 0.1)
    assert point["on_calibration"]["sensitivity"] == pytest.approx(best)


def test_a_budget_without_a_target_refers_the_least_certain_share(rng):
    y, proba, pred = _binary(rng, 700)
    calibration = fit_conformal(y, proba, kind="split")
    point = choose_referral({"rule": "certainty", "max_referral": 0.2}, calibration, y, pred, proba)
    assert point["reached"] is None and 0.15 < point["on_calibration"]["referred"] <= 0.2


def test_set_rule_refers_ambiguous_and_empty_sets_with_reasons(rng):
    y, proba, pred = _three_class(rng, 900, signal=2.5)  # at 90%: mostly single sets, some pairs, a few empty
    calibration = fit_conformal(y[:450], proba[:450], kind="split")
    point = choose_referral({"rule": "set", "level": 0.9}, calibration, y[:450], pred[:450], proba[:450])
    assert "threshold" not in point and point["on_calibration"]["n"] == 450
    out = apply_referral(point, calibration, proba[450:])
    size = calibration.prediction_sets(proba[450:], 0.9).sum(axis=1)
    assert np.array_equal(out.refer, size != 1)
    assert np.any(size == 0) and np.any(size == 2)
    expected = {0: "empty set at 90%", 1: "", 2: "set of 2 classes at 90%", 3: "set of 3 classes at 90%"}
    assert out.reasons == [expected[n] for n in size]


@pytest.mark.parametrize("rule, message", [
    ({"rule": "margin"}, "unknown referral rule 'margin'"),
    ({"rule": "certainty", "max_referral": 1.5}, r"max_referral must lie in \[0, 1\)"),
    ({"rule": "set", "level": 0.8}, "level 0.8 was not calibrated"),
    ({"rule": "certainty", "max_referral": 0.2, "target_sensitivity": 0.9, "target_class": 2},
     "no calibration row of target class 2"),
])
def test_bad_rules(rng, rule, message):
    y, proba, pred = _binary(rng, 200)
    calibration = fit_conformal(y, proba, kind="split")
    with pytest.raises(ValueError, match=message):
        choose_referral(rule, calibration, y, pred, proba)
