"""External validation's plain parts, without a model: ECE and its bins, matching classes by name, the stratified
recalibration split, the atomic evaluation folder. `medstack evaluate` end to end is tests/test_evaluate.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medstack.evaluation.labelled import EvaluationError, match_classes, read_labelled
from medstack.evaluation.recalibrate import fitting_part, with_temperature
from medstack.models.reliability import (
    ece_interval, expected_calibration_error, reliability_table,
)


def test_binary_ece_bins_p_positive_by_hand():
    """Three images in bin [0.2, 0.3) (mean p 0.25, 1 positive: gap 1/3 - 0.25), one in [0.9, 1] (p 0.95, positive:
    gap 0.05): ECE = (3 * 0.08333 + 1 * 0.05) / 4."""
    y = np.array([1, 0, 0, 1])
    p1 = np.array([0.2, 0.25, 0.3 - 1e-9, 0.95])
    proba = np.stack([1 - p1, p1], axis=1)
    expected = (3 * abs(1 / 3 - p1[:3].mean()) + abs(1 - 0.95)) / 4
    assert expected_calibration_error(y, proba) == pytest.approx(expected)
    table = reliability_table(y, proba)
    assert [row["n"] for row in table] == [0, 0, 3, 0, 0, 0, 0, 0, 0, 1]
    assert table[2]["observed"] == pytest.approx(1 / 3) and table[0]["predicted"] is None
    # The positive class is what the bins read: naming class 0 positive bins 1 - p and counts class-0 images.
    assert expected_calibration_error(1 - y, proba[:, ::-1], positive_class=0) == pytest.approx(expected)


def test_multiclass_ece_is_top_label_confidence_against_argmax_accuracy():
    proba = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]])
    y = np.array([0, 1, 2, 1])  # argmax right, wrong, right, right
    # bins: 0.7 and 0.6 -> [0.6, 0.7) holds 0.6, [0.7, 0.8) holds 0.7; 0.8 -> [0.8, 0.9); 0.5 -> [0.5, 0.6)
    expected = (abs(1 - 0.7) + abs(0 - 0.6) + abs(1 - 0.8) + abs(1 - 0.5)) / 4
    assert expected_calibration_error(y, proba) == pytest.approx(expected)


def test_ece_is_small_for_calibrated_draws_and_large_for_overconfident_ones(rng):
    p1 = rng.uniform(0, 1, 4000)
    y = (rng.uniform(0, 1, 4000) < p1).astype(int)  # calibrated by construction
    calibrated = np.stack([1 - p1, p1], axis=1)
    sharp = np.clip(p1 * 2 - 0.5, 0, 1)  # pushed towards 0 and 1: overconfident
    overconfident = np.stack([1 - sharp, sharp], axis=1)
    assert expected_calibration_error(y, calibrated) < 0.03
    assert expected_calibration_error(y, overconfident) > 0.1
    low, high = ece_interval(y, calibrated, n_boot=200, seed=1)
    assert low <= expected_calibration_error(y, calibrated) <= high
    assert ece_interval(y, calibrated, n_boot=0) is None


def test_classes_are_matched_by_name_in_any_order_and_a_mismatch_names_both_lists():
    assert match_classes("x.npz", ["pneumonia", "normal"], ["normal", "pneumonia"]) == [1, 0]
    with pytest.raises(EvaluationError) as caught:
        match_classes("site-b/", ["normal", "covid"], ["normal", "pneumonia"])
    message = str(caught.value)
    assert "['normal', 'covid']" in message and "['normal', 'pneumonia']" in message
    assert "missing ['pneumonia']" in message and "not in the model ['covid']" in message


def test_npz_labels_are_renumbered_to_the_bundle_order(tmp_path):
    path = tmp_path / "site.npz"
    np.savez(path, images=np.zeros((4, 28, 28), np.uint8), labels=np.array([0, 1, 1, 0]))
    data = read_labelled(path, ["normal", "pneumonia"], class_names=["pneumonia", "normal"])  # label 0 = pneumonia
    assert data.labels_of([f"{path}:{i}" for i in range(4)]).tolist() == [1, 0, 0, 1]
    assert data.data_classes == ["pneumonia", "normal"]
    np.savez(path, images=np.zeros((4, 28, 28), np.uint8), labels=np.array([0, 1, 1, 0]),
             class_names=np.array(["normal", "pneumonia"]))
    with pytest.raises(EvaluationError, match=r"--class-names \['pneumonia', 'normal'\] disagrees"):
        read_labelled(path, ["normal", "pneumonia"], class_names=["pneumonia", "normal"])
    np.savez(path, images=np.zeros((4, 28, 28), np.uint8), labels=np.array([0, 1, 2, 0]),
             class_names=np.array(["normal", "pneumonia"]))
    with pytest.raises(EvaluationError, match=r"labels run 0\.\.2, but the class names"):
        read_labelled(path, ["normal", "pneumonia"])


def test_the_recalibration_split_is_stratified_seeded_and_leaves_rows_to_judge():
    y = np.array([0] * 45 + [1] * 75 + [2] * 3)
    fit = fitting_part(y, 0.5, seed=7)
    assert [int(fit[y == k].sum()) for k in (0, 1, 2)] == [22, 38, 2]  # round(0.5 n), one left to judge
    assert np.array_equal(fit, fitting_part(y, 0.5, seed=7))
    assert not np.array_equal(fit, fitting_part(y, 0.5, seed=8))
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        fitting_part(y, 1.0, seed=0)


def test_temperature_one_leaves_probabilities_and_a_large_one_flattens_them():
    proba = np.array([[0.9, 0.1], [0.3, 0.7]])
    np.testing.assert_allclose(with_temperature(proba, 1.0), proba)
    flat = with_temperature(proba, 100.0)
    assert np.all(np.abs(flat - 0.5) < 0.02)


def test_a_failing_write_leaves_no_evaluation_folder(tmp_path):
    from medstack.evaluation.folder import write_evaluation

    out = tmp_path / "evaluations"

    def broken_plots(folder):
        (folder / "reliability.png").write_bytes(b"half")
        raise RuntimeError("disk full while drawing")

    with pytest.raises(RuntimeError, match="disk full"):
        write_evaluation(out, "20260101-000000-site-abcd", {"x": 1}, pd.DataFrame({"input": ["a"]}), "# r\n",
                         broken_plots)
    assert list(out.iterdir()) == []  # neither the folder nor its temporary
    folder = write_evaluation(out, "20260101-000000-site-abcd", {"x": 1}, pd.DataFrame({"input": ["a"]}), "# r\n",
                              lambda folder: None)
    assert sorted(p.name for p in folder.iterdir()) == ["evaluation.json", "plots", "predictions.csv", "report.md"]


def test_the_evaluate_deployments_follow_an_alias_and_ask_for_the_data():
    """prefect.yaml deploys medstack-evaluate by registry alias (no run folder baked in); each run gives its data."""
    from pathlib import Path

    import yaml
    from prefect.utilities.callables import parameter_schema

    from medstack.flows.evaluate import FLOW_NAME, evaluate_flow

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())
    mine = {d["name"]: d for d in spec["deployments"] if d["entrypoint"] == "flows/evaluate.py:evaluate_flow"}
    assert set(mine) == {"pneumoniamnist", "smoke"} and evaluate_flow.name == FLOW_NAME == "medstack-evaluate"
    for deployment in mine.values():
        name, at, alias = deployment["parameters"]["model"].partition("@")
        assert at and name and alias == "champion" and deployment["enforce_parameter_schema"]
    schema = parameter_schema(evaluate_flow.fn).model_dump()
    assert schema["required"] == ["data"]
    assert {"model", "recalibrate", "class_names", "registry", "output_dir"} <= set(schema["properties"])


def test_recalibration_of_a_three_class_model_refits_on_one_part_and_judges_both_on_the_other(rng):
    """An overconfident 3-class model (its logits doubled): the temperature refitted on half of each class comes out
    near 2, and the ECE judged on the other half falls; the refitted offsets follow the run's policy."""
    from medstack.evaluation.measures import Settings
    from medstack.evaluation.recalibrate import recalibrate
    from medstack.inference.bundle import softmax

    y = rng.choice(3, size=900, p=[0.6, 0.3, 0.1])
    logits = rng.normal(0, 1, (900, 3)) + 1.5 * np.eye(3)[y]
    honest = softmax(logits)
    y = np.array([rng.choice(3, p=p) for p in honest])  # labels drawn from the honest probabilities
    overconfident = softmax(2 * logits)
    settings = Settings(n_boot=50, ci=0.95, seed=3, positive_class=1, threshold_policy="f1", target_sensitivity=0.9,
                        multiclass_policy="balanced_accuracy")
    out = recalibrate(y, overconfident, {"kind": "argmax"}, None, None, settings, ["a", "b", "c"], fraction=0.5)
    assert 1.6 < out["temperature"] < 2.5
    assert out["after"]["calibration"]["ece"] < out["before"]["calibration"]["ece"]
    assert out["after"]["calibration"]["score"].startswith("top-label confidence")
    assert out["decision"]["kind"] == "offsets" and out["before"]["decision"] == {"kind": "argmax"}
    fitted = np.zeros(len(y), bool)
    fitted[out["fitted_rows"]] = True
    assert out["judged_on"] == {name: int((y[~fitted] == k).sum()) for k, name in enumerate("abc")}
    assert out["before"]["trust"] is None  # no calibration in the "bundle": nothing invented for before
    after = out["after"]["trust"]  # refitted split conformal sets and medstack's default referral rule
    assert [entry["level"] for entry in after["conformal"]["levels"]] == [0.9, 0.95]
    assert after["conformal"]["kind"] == "split" and out["referral_rule"] == {"rule": "set", "level": 0.9}
    assert after["referral"]["test"]["n"] == int((~fitted).sum())
