"""Prediction sets and referral wired for a model (medstack.models.trust), for new images (medstack.inference.trust)
and in the report (medstack.report_trust, medstack.plots): synthetic probabilities, no training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medstack.inference.trust import p_value_column, read_trust, set_column, trust_columns
from medstack.models.conformal import fit_conformal
from medstack.models.decision import apply_decision
from medstack.models.referral import apply_referral
from medstack.models.trust import fit_trust, judge_trust
from medstack.report_trust import HEADING, trust_section


def _rows(rng, n: int, k: int, weights) -> tuple[np.ndarray, np.ndarray]:
    """Labels with class shares ``weights`` and softmax probabilities that lean towards the true class."""
    y = rng.choice(k, n, p=weights)
    logits = rng.normal(size=(n, k)) + 1.8 * np.eye(k)[y]
    return y, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("k", [2, 4])
def test_fit_on_calibration_rows_and_judge_on_test_rows(rng, k):
    weights = [0.8, 0.2] if k == 2 else [0.6, 0.27, 0.1, 0.03]
    y_cal, p_cal = _rows(rng, 300, k, weights)
    y_test, p_test = _rows(rng, 400, k, weights)
    decision = {"kind": "threshold", "threshold": 0.3, "positive_class": 1} if k == 2 else {"kind": "argmax"}
    calibration, point = fit_trust(y_cal, p_cal, decision, kind="split", levels=[0.9, 0.95],
                                   rule={"rule": "set", "level": 0.9})
    assert calibration.to_dict() == fit_conformal(y_cal, p_cal, kind="split", levels=[0.9, 0.95]).to_dict()
    assert point["on_calibration"]["n"] == 300
    names = [f"c{i}" for i in range(k)]
    judged = judge_trust(y_test, p_test, decision, calibration, point, names)
    json.dumps(judged, allow_nan=False)  # plain numbers: no NaN, no infinity, no NumPy scalars
    for entry in judged["conformal"]["levels"]:
        sets = calibration.prediction_sets(p_test, entry["level"])
        for c, row in enumerate(entry["coverage"]):
            assert row["class"] == names[c] and row["n"] == int(np.sum(y_test == c))
            assert row["covered"] == int(sets[y_test == c, c].sum()) and row["ci_low"] <= row["coverage"] <= row["ci_high"]
            assert row["available"] == (c not in calibration.unavailable(entry["level"]))
        assert entry["mean_size"] == pytest.approx(sets.sum(axis=1).mean())
        assert entry["single"] == pytest.approx(np.mean(sets.sum(axis=1) == 1))
    refer = apply_referral(point, calibration, p_test).refer
    test = judged["referral"]["test"]
    assert test["referred"] == pytest.approx(refer.mean()) and test["kept"] == int((~refer).sum())
    kept_pred = apply_decision(p_test, decision)[~refer]  # the model's own decision, not argmax
    assert test["balanced_accuracy"] == pytest.approx(np.mean([np.mean(kept_pred[y_test[~refer] == c] == c)
                                                               for c in range(k)]))
    if k == 2:
        assert test["sensitivity"] == test["recall"][1] and test["specificity"] == test["recall"][0]
    assert [r["target_referral"] for r in judged["referral"]["risk_coverage"]][-1] == 0.5
    # A class with under 19 calibration rows is refused at 95% (9 at 90%) and named.
    for entry in judged["conformal"]["levels"]:
        assert entry["refused"] == [names[c] for c in range(k) if calibration.counts[c] < entry["min_count"]]
    assert k == 2 or judged["conformal"]["levels"][1]["refused"] == ["c3"]


def test_trust_columns_apply_the_stored_calibration_unchanged(rng):
    y_cal, p_cal = _rows(rng, 200, 3, [0.6, 0.3, 0.1])
    calibration, point = fit_trust(y_cal, p_cal, {"kind": "argmax"}, kind="split", levels=[0.9, 0.975],
                                   rule={"rule": "set", "level": 0.9})
    meta = json.loads(json.dumps({"conformal": {"models": {"stacking": {"calibration": calibration.to_dict(),
                                                                        "referral": point}}}}))
    stored, stored_point = read_trust(meta, "stacking")
    assert read_trust(meta, "ldam") == (None, None) and read_trust({}, "stacking") == (None, None)
    _, p_new = _rows(rng, 50, 3, [0.6, 0.3, 0.1])
    p_new[0] = [0.0005, 0.0005, 0.999]  # a very unusual image: nothing like class 2's calibration... or anyone's
    trust = trust_columns(stored, stored_point, ["a", "b", "c"], p_new)
    columns = trust.columns()
    assert set(columns) == {"set_90", "set_97.5", "p_value:a", "p_value:b", "p_value:c", "refer", "refer_reason"}
    assert set_column(0.975) == "set_97.5" and p_value_column("b") == "p_value:b"
    sets = calibration.prediction_sets(p_new, 0.9)
    for i, text in enumerate(columns["set_90"]):
        assert text == "{" + ", ".join(n for n, inside in zip("abc", sets[i]) if inside) + "}"
        assert trust.row(i)["sets"]["set_90"] == [n for n, inside in zip("abc", sets[i]) if inside]
        assert columns["refer"][i] == (sets[i].sum() != 1)
        assert (columns["refer_reason"][i] == "") == (not columns["refer"][i])
    np.testing.assert_array_equal(np.array([columns[f"p_value:{n}"] for n in "abc"]).T, calibration.p_values(p_new))
    assert trust_columns(None, None, ["a", "b", "c"], p_new) is None


def _metrics(rng, k: int, kind: str) -> dict:
    weights = [0.85, 0.15] if k == 2 else [0.5, 0.3, 0.2]
    names = [f"c{i}" for i in range(k)]
    y_cal, p_cal = _rows(rng, 90, k, weights)
    y_test, p_test = _rows(rng, 150, k, weights)
    decision = {"kind": "argmax"}
    models = {}
    for name in ("ldam", "stacking"):
        calibration, point = fit_trust(y_cal, p_cal, decision, kind=kind, levels=[0.9, 0.95],
                                       rule={"rule": "set", "level": 0.9})
        models[name] = {"test": {"recall": 0.8, "specificity": 0.9, "balanced_accuracy": 0.85},
                        **judge_trust(y_test, p_test, decision, calibration, point, names)}
    counts = np.bincount(y_cal, minlength=k).tolist()
    setup = {"kind": kind, "calibration_share": 0.1 if kind == "split" else None, "calibration_rows": 90,
             "calibration_counts": dict(zip(names, counts)), "levels": [0.9, 0.95], "referral": {"rule": "set"}}
    return {"dataset": {"classes": names}, "models": models, "conformal": setup}


@pytest.mark.parametrize("k", [2, 3])
def test_report_section_states_the_guarantee_the_refusals_and_the_referral(rng, k, tmp_path):
    from medstack.plots import plot_risk_coverage

    metrics = _metrics(rng, k, "split")
    text = "\n".join(trust_section(metrics))
    assert text.startswith(HEADING) and "exact split conformal" in text and "P(y is in its 90% set) >= 90%" in text
    assert "held-out slice of 10% of the training split (90 images" in text
    rare = min(metrics["conformal"]["calibration_counts"].items(), key=lambda kv: kv[1])
    if rare[1] < 19:  # 95% refused for the rare class: named, and "not available" in its coverage cells
        assert f"refused for {rare[0]} ({rare[1]})" in text and "not available" in text
    table = [line for line in text.splitlines() if line.startswith("| ldam | 90% |")]
    assert len(table) == 1 and table[0].count("[") == k  # one coverage interval per class
    assert "refer when the 90% set is not a single class" in text
    assert ("kept sensitivity" in text) == (k == 2) and ("lowest kept class recall" in text) == (k > 2)
    plot_risk_coverage(tmp_path / "rc.png", metrics, metrics["dataset"]["classes"])
    assert (tmp_path / "rc.png").read_bytes()[:4] == b"\x89PNG"

    oof = "\n".join(trust_section(_metrics(rng, k, "oof")))
    assert "Empirical coverage only" in oof and "no level is promised" in oof and "exact split" not in oof
    assert trust_section({"dataset": {"classes": ["a", "b"]}, "models": {"x": {"test": {}}}}) == []  # older runs

