"""The run folder's owner (medstack.run_folder, medstack.run_comparison): its readers and rules on small files
written here, and that no other module spells the folder's file names."""

from __future__ import annotations

import ast
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from medstack import run_folder
from medstack.console.runs import compare_rows, find_runs, paired_roc_auc, run_row
from medstack.inference.promotion import compare_on_test
from medstack.models.metrics import SCALAR_KEYS
from medstack.report import render_report
from medstack.run_comparison import shared_test
from medstack.run_folder import (
    BEST_TEST_AUC, HEADLINE_METRICS, RECOMMENDED, RunFolderError, bundle_recommendation, member_file,
    positive_class_index, predictions_frame, read_metrics, read_oof_predictions, read_positive_class,
    recommended_model, run_recommendation,
)

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["normal", "pneumonia"]


def _scores(roc_auc, balanced_accuracy=0.5) -> dict:
    return {"test": {"roc_auc": roc_auc, "balanced_accuracy": balanced_accuracy}}


# --- the recommended model ---------------------------------------------------------------------------------------

def test_the_runs_own_recommendation_wins_when_it_names_one_of_its_models():
    models = {"ldam": _scores(0.95), "stacking": _scores(0.80)}
    assert recommended_model({"model": "stacking", "reason": "OOF"}, models) == ("stacking", RECOMMENDED)


@pytest.mark.parametrize("recommended", [None, {}, {"model": "gone"}, "stacking"])
def test_without_a_usable_recommendation_the_best_test_roc_auc_is_taken_and_labelled(recommended):
    models = {"a": _scores(0.70), "b": _scores(0.90), "c": _scores(0.85)}
    assert recommended_model(recommended, models) == ("b", BEST_TEST_AUC)


def test_the_fallback_breaks_ties_by_balanced_accuracy_then_order_and_ranks_undefined_figures_last():
    models = {"nan": _scores(math.nan), "none": {"test": {}}, "first": _scores(0.8, 0.6), "second": _scores(0.8, 0.7),
              "third": _scores(0.8, 0.7)}
    assert recommended_model(None, models) == ("second", BEST_TEST_AUC)
    assert recommended_model(None, {"nan": _scores(math.nan), "text": _scores("0.9"), "none": {}}) == (None, "")
    assert recommended_model(None, {}) == (None, "")


def test_metrics_json_and_model_json_give_the_same_pick():
    """metrics.json keeps every model under ``models``, model.json's summary under ``metrics``: one rule reads both."""
    per_model = {"ldam": _scores(0.91), "soft_voting": _scores(0.93)}
    for recommended in ({"model": "ldam", "reason": "r"}, {}):
        metrics = {"models": per_model, "recommended": recommended}
        bundle = {"metrics": per_model, "recommended": recommended}
        assert run_recommendation(metrics) == bundle_recommendation(bundle)
    assert run_recommendation({"models": per_model}) == ("soft_voting", BEST_TEST_AUC)


def test_runs_lists_the_pick_with_its_label(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / run_folder.MANIFEST_FILE).write_text(json.dumps({"created": "2025-01-01T00:00:00+00:00"}))
    (run / run_folder.METRICS_FILE).write_text(json.dumps({"models": {"a": _scores(0.7), "b": _scores(0.8)}}))
    assert run_row(run)["model"] == f"b ({BEST_TEST_AUC})"


# --- the positive class ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("configured, n_classes, expected", [(None, 2, 1), (0, 2, 0), (1, 2, 1), (None, 5, 1),
                                                             (3, 5, 3), (0, None, 0)])
def test_the_positive_class_is_the_configured_one_else_1(configured, n_classes, expected):
    assert positive_class_index(configured, n_classes) == expected


def test_a_binary_positive_class_beyond_1_is_refused():
    with pytest.raises(ValueError, match="data.positive_class must be 0 or 1 for a binary dataset, got 2"):
        positive_class_index(2, 2)


@pytest.mark.parametrize("data, expected", [("{positive_class: 0}", 0), ("{positive_class: null}", 1),
                                            ("{name: x}", 1)])
def test_a_finished_run_reads_its_positive_class_from_its_config(tmp_path, data, expected):
    # config.yaml as a run writes it: the resolved recipe as a comment header, then the config.
    (tmp_path / run_folder.CONFIG_FILE).write_text(f"# Training recipe ...\n#   ldam: batch size 32\ndata: {data}\n")
    assert read_positive_class(tmp_path) == expected


# --- the metric list ---------------------------------------------------------------------------------------------

def test_the_headline_metrics_are_computed_ones_and_every_summary_lists_them_in_one_order():
    assert set(HEADLINE_METRICS) <= set(SCALAR_KEYS)
    test = {k: 0.5 for k in HEADLINE_METRICS} | {"threshold": 0.5}
    metrics = {"dataset": {"name": "x", "classes": CLASSES, "counts": {"test": {"normal": 5, "pneumonia": 5}}},
               "models": {"m": {"test": test, "oof": dict(test)}}}
    report = render_report(metrics, {}, {}, [], {})
    headers = [line for line in report.splitlines() if line.startswith("| model |")]
    assert headers[0] == "| " + " | ".join(["model", *HEADLINE_METRICS, "decision"]) + " |"
    assert headers[1] == "| " + " | ".join(["model", *HEADLINE_METRICS, "test - OOF roc_auc"]) + " |"
    _, rows = compare_rows(metrics, metrics)
    assert [row[1] for row in rows] == list(HEADLINE_METRICS)


# --- readers -----------------------------------------------------------------------------------------------------

def test_predictions_read_back_as_written_sorted_by_dataset_row(tmp_path):
    rows, labels = np.array([7, 3, 5]), np.array([1, 0, 1])
    proba = np.array([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6]])
    predictions_frame(rows, labels, {"ldam": proba, "stacking": proba[:, ::-1]}, CLASSES, fold=np.array([0, 1, 0])
                      ).to_csv(tmp_path / run_folder.OOF_PREDICTIONS_FILE, index=False)
    got = read_oof_predictions(tmp_path)
    order = np.argsort(rows)
    assert got.rows.tolist() == [3, 5, 7] and got.labels.tolist() == labels[order].tolist()
    assert got.folds.tolist() == [1, 0, 0] and list(got.probas) == ["ldam", "stacking"]
    np.testing.assert_array_equal(got.probas["ldam"], proba[order])
    np.testing.assert_array_equal(got.probas["stacking"], proba[order][:, ::-1])
    header = (tmp_path / run_folder.OOF_PREDICTIONS_FILE).read_text().splitlines()[0]
    assert header == "row,label,fold,ldam:p(normal),ldam:p(pneumonia),stacking:p(normal),stacking:p(pneumonia)"


def test_an_unreadable_run_file_is_named_in_the_error(tmp_path):
    with pytest.raises(RunFolderError, match=re.escape(f"{tmp_path / run_folder.METRICS_FILE}: cannot be read as a run")):
        read_metrics(tmp_path)
    (tmp_path / run_folder.METRICS_FILE).write_text("[1, 2]")
    with pytest.raises(RunFolderError, match="not a JSON object"):
        read_metrics(tmp_path)


def test_only_finished_plain_folders_with_a_manifest_are_runs(tmp_path):
    for name in ("20250101-a", ".20250101-b.tmp", "no-manifest"):
        (tmp_path / name).mkdir()
    for name in ("20250101-a", ".20250101-b.tmp"):
        (tmp_path / name / run_folder.MANIFEST_FILE).write_text("{}")
    os.symlink(tmp_path / "20250101-a", tmp_path / "link")
    assert [p.name for p in find_runs(tmp_path)] == ["20250101-a"]


def test_fold_models_are_named_one_way():
    assert member_file("ldam", 0) == f"{run_folder.MODELS_DIR}/ldam/fold-1.keras"


# --- the paired comparison of two runs ---------------------------------------------------------------------------

def _run(root: Path, rows, labels, probas, positive_class: int | None = 1) -> Path:
    root.mkdir(parents=True)
    predictions_frame(np.asarray(rows), np.asarray(labels), probas, CLASSES).to_csv(
        root / run_folder.TEST_PREDICTIONS_FILE, index=False)
    (root / run_folder.CONFIG_FILE).write_text(f"data: {{positive_class: {json.dumps(positive_class)}}}\n")
    return root


def _binary(score: np.ndarray) -> np.ndarray:
    return np.column_stack([1 - score, score])


@pytest.fixture
def two_runs(tmp_path):
    """Run A and run B on the same 120 test images (B lists them in another order); B's ``m`` is perfect."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 120)
    noisy = np.clip(0.35 * labels + 0.65 * rng.random(120), 0, 1)
    rows, order = np.arange(1000, 1120), rng.permutation(120)
    a = _run(tmp_path / "a", rows, labels, {"m": _binary(noisy), "same": _binary(noisy)})
    b = _run(tmp_path / "b", rows[order], labels[order],
             {"m": _binary(labels[order] * 0.9 + 0.05), "same": _binary(noisy[order])}, positive_class=0)
    return a, b, rows, labels, noisy


def test_two_runs_on_the_same_images_pair_row_by_row(two_runs):
    a, b, _, labels, _ = two_runs
    shared = shared_test(a, b)
    assert shared is not None and shared.positive_class == 0  # B's
    np.testing.assert_array_equal(shared.labels, labels)
    same = shared.roc_auc_difference("same", "same")
    assert same["difference"] == 0 and tuple(same["ci"]) == (0.0, 0.0)
    better = shared.roc_auc_difference("m", "m")
    assert better["b"] == pytest.approx(1.0) and better["difference"] > 0 and better["ci"][0] > 0


def test_runs_on_other_images_or_labels_are_not_paired(two_runs, tmp_path):
    a, _, rows, labels, noisy = two_runs
    shifted = _run(tmp_path / "shifted", rows + 1, labels, {"m": _binary(noisy)})
    relabelled = _run(tmp_path / "relabelled", rows, 1 - labels, {"m": _binary(noisy)})
    assert shared_test(a, shifted) is None and shared_test(a, relabelled) is None
    assert paired_roc_auc(a, shifted, ["m"]) == {}
    with pytest.raises(ValueError, match="share a data fingerprint but not their test rows"):
        compare_on_test(a, {"recommended": {"model": "m"}}, shifted, {"recommended": {"model": "m"}})


def test_compare_and_auto_promotion_pair_the_same_way(two_runs):
    """`medstack compare` (each model with itself) and the auto-promotion (recommended with recommended) give the
    same interval where they pair the same models."""
    a, b, *_ = two_runs
    meta = {"run_id": "x", "recommended": {"model": "m"}, "metrics": {"m": {}, "same": {}}}
    evidence = compare_on_test(a, meta, b, meta)
    console = paired_roc_auc(a, b, ["m", "same", "absent"])
    assert set(console) == {"m", "same"}
    assert evidence["difference_ci"] == [round(v, 6) for v in console["m"]]
    assert evidence["candidate_roc_auc"] == pytest.approx(1.0) and evidence["test_rows"] == 120


# --- one owner of the file names ---------------------------------------------------------------------------------

FILE_NAMES = (run_folder.METRICS_FILE, run_folder.LEADERBOARD_FILE, run_folder.OOF_PREDICTIONS_FILE,
              run_folder.TEST_PREDICTIONS_FILE, run_folder.CALIBRATION_PREDICTIONS_FILE, run_folder.REPORT_FILE, run_folder.CONFIG_FILE,
              run_folder.MANIFEST_FILE, run_folder.BUNDLE_FILE, run_folder.META_MODEL_FILE.rpartition("/")[2])
SOURCES = ("medstack", "flows", "tasks", "models", "benchmarks")


def _spelled_names(path: Path) -> list[str]:
    """String constants (f-string pieces included) that are a run-folder file name or a path ending in one."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if any(node.value == name or node.value.endswith(f"/{name}") for name in FILE_NAMES):
                found.append(f"line {node.lineno}: {node.value!r}")
    return found


def test_only_the_owner_spells_the_run_folders_file_names():
    owner = REPO / "medstack" / "run_folder.py"
    files = [p for folder in SOURCES for p in sorted((REPO / folder).rglob("*.py")) if p != owner]
    assert len(files) > 50
    found = {str(p.relative_to(REPO)): hits for p in files if (hits := _spelled_names(p))}
    assert not found, found
    assert _spelled_names(owner)  # the check would see a name where one is spelled
