"""medstack.report: fit heuristics and the markdown report, on synthetic inputs (no training)."""

import math

import pytest

from medstack.fit_diagnosis import diagnose_all, diagnose_fit
from medstack.report import render_report

# Two phases, as LDAM-DRW writes them: the second phase's losses are on another scale. Within the last phase val
# loss falls all along, but over the whole history it ends far above the phase-0 minimum while train loss is lower.
DRW_RESCALED = {
    "loss": [1.0, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4],
    "val_loss": [1.0, 0.7, 0.5, 0.9, 0.85, 0.8, 0.75],
    "loss_phase": [0, 0, 0, 1, 1, 1, 1],
}


@pytest.mark.parametrize(
    "history, verdict",
    [
        ({"loss": [1.0, 0.6, 0.4, 0.3, 0.2, 0.1], "val_loss": [1.0, 0.7, 0.5, 0.6, 0.8, 0.9]}, "overfitting"),
        ({"loss": [0.70, 0.69, 0.69, 0.69], "val_loss": [0.70, 0.70, 0.69, 0.70]}, "underfitting"),
        ({"loss": [1.0, 0.6, 0.4, 0.35], "val_loss": [1.0, 0.7, 0.55, 0.5]}, "ok"),
        ({"loss": [1.0, 0.6], "val_loss": [1.0, 0.7]}, "too_short"),
        # LDAM-DRW: the loss jumps at the switch to re-weighting; within the last phase all is healthy.
        ({"loss": [2.0, 1.0, 0.8, 3.0, 2.5, 2.2, 2.0], "val_loss": [2.0, 1.0, 0.9, 3.2, 2.8, 2.6, 2.5],
          "loss_phase": [0, 0, 0, 1, 1, 1, 1]}, "ok"),
        (DRW_RESCALED, "ok"),
        # Last phase has only 2 epochs: too short, whatever the first phase did.
        ({"loss": [1.0, 0.6, 0.4, 0.3, 0.9, 0.8], "val_loss": [1.0, 0.7, 0.5, 0.4, 1.0, 0.9],
          "loss_phase": [0, 0, 0, 0, 1, 1]}, "too_short"),
        # Overfitting inside the last phase is still caught.
        ({"loss": [1.0, 0.7, 2.0, 1.5, 1.2, 1.0, 0.8], "val_loss": [1.0, 0.8, 2.0, 1.6, 1.9, 2.1, 2.3],
          "loss_phase": [0, 0, 1, 1, 1, 1, 1]}, "overfitting"),
        # Flat last phase after a first phase that learned: converged model being fine-tuned, not underfitting.
        ({"loss": [1.0, 0.5, 0.3, 0.30, 0.30, 0.29], "val_loss": [1.0, 0.6, 0.4, 0.40, 0.40, 0.40],
          "loss_phase": [0, 0, 0, 1, 1, 1]}, "ok"),
        # Both phases flat: underfitting.
        ({"loss": [0.70, 0.69, 0.69, 0.69, 0.69, 0.69], "val_loss": [0.70, 0.70, 0.69, 0.70, 0.70, 0.69],
          "loss_phase": [0, 0, 0, 1, 1, 1]}, "underfitting"),
        # Val loss rises but train loss rises too: unstable, not overfitting.
        ({"loss": [1.0, 0.6, 0.5, 0.7, 0.8], "val_loss": [1.0, 0.7, 0.5, 0.8, 0.9]}, "ok"),
        # Val loss drifts up 6% from its minimum: noise, under the 10% rule.
        ({"loss": [1.0, 0.6, 0.4, 0.3, 0.25], "val_loss": [1.0, 0.6, 0.50, 0.52, 0.53]}, "ok"),
        # Val loss up 50% but only by 0.015: under the absolute margin.
        ({"loss": [0.2, 0.1, 0.05, 0.03, 0.02], "val_loss": [0.1, 0.05, 0.03, 0.04, 0.045]}, "ok"),
        ({"loss": [1.0, 0.6, 0.4, 0.3]}, "too_short"),
    ],
    ids=["overfit", "underfit", "healthy", "short", "drw-jump", "drw-rescaled", "drw-short-last-phase",
         "drw-overfit-in-last-phase", "drw-converged-flat", "drw-flat-both", "unstable", "small-rise",
         "tiny-absolute-rise", "no-val-loss"],
)
def test_diagnose_fit(history, verdict):
    got, why = diagnose_fit(history)
    assert got == verdict, why


def test_phases_matter_for_the_drw_curve():
    """The same numbers judged across the loss switch look like overfitting: the phase split is what saves them."""
    whole = {k: v for k, v in DRW_RESCALED.items() if k != "loss_phase"}
    assert diagnose_fit(whole)[0] == "overfitting"
    assert diagnose_fit(DRW_RESCALED)[0] == "ok"


def test_overfit_reason_names_the_epochs_and_numbers():
    _, why = diagnose_fit({"loss": [1.0, 0.6, 0.4, 0.3, 0.2], "val_loss": [1.0, 0.5, 0.6, 0.7, 0.9]})
    assert "from 0.500 (epoch 2) to 0.900 (epoch 5" in why and "0.600 to 0.200" in why
    assert "weights" not in why  # which weights early stopping kept is not known from the curves alone


def test_overfit_reason_names_the_epoch_early_stopping_kept_not_the_val_loss_minimum():
    history = {"loss": [1.0, 0.6, 0.4, 0.3, 0.2], "val_loss": [1.0, 0.5, 0.6, 0.7, 0.9]}
    info = {"best_epoch": 3, "recipe": {"monitor": "val_auc"}}  # 0-based: val ROC AUC peaked at epoch 4
    _, why = diagnose_fit(history, info)
    assert why.endswith("early stopping kept the epoch-4 weights (best val_auc)")
    assert diagnose_all({"ldam": {0: history}}, {"ldam": {0: info}})["ldam"][0][1] == why


def test_overfit_epochs_are_counted_over_the_whole_history():
    _, why = diagnose_fit({"loss": [1.0, 0.7, 2.0, 1.5, 1.2, 1.0, 0.8], "val_loss": [1.0, 0.8, 2.0, 1.6, 1.9, 2.1, 2.3],
                           "loss_phase": [0, 0, 1, 1, 1, 1, 1]})
    assert "from 1.600 (epoch 4) to 2.300 (epoch 7" in why


def test_underfit_and_short_reasons_carry_numbers():
    _, why = diagnose_fit({"loss": [0.70, 0.69, 0.69, 0.69], "val_loss": [0.70, 0.70, 0.69, 0.70]})
    assert "0.700 -> 0.690" in why
    _, why = diagnose_fit({"loss": [1.0, 0.6], "val_loss": [1.0, 0.7]})
    assert why.startswith("2 epoch(s)")


def test_non_finite_epochs_are_dropped_and_counted():
    verdict, why = diagnose_fit({"loss": [1.0, 0.6, math.nan, 0.4, 0.35], "val_loss": [1.0, 0.7, math.nan, 0.55, 0.5]})
    assert verdict == "ok" and "1 epoch(s) with non-finite loss ignored" in why
    assert diagnose_fit({"loss": [1.0, math.nan, math.inf], "val_loss": [1.0, 0.5, math.nan]})[0] == "too_short"


def test_diagnose_all_keeps_strategies_and_sorts_folds():
    healthy = {"loss": [1.0, 0.6, 0.4], "val_loss": [1.0, 0.7, 0.6]}
    got = diagnose_all({"ldam": {1: healthy, 0: {"loss": [1.0], "val_loss": [1.0]}}, "smote": {0: healthy}})
    assert list(got) == ["ldam", "smote"] and list(got["ldam"]) == [0, 1]
    assert got["ldam"][0][0] == "too_short" and got["ldam"][1][0] == "ok" and got["smote"][0][0] == "ok"


# ----------------------------------------------------------------------------------------------------------- report


def _m(roc_auc, brier=0.1, mcc=0.5, threshold=0.35):
    m = {"accuracy": 0.9, "balanced_accuracy": 0.8, "precision": 0.7, "recall": 0.75, "specificity": 0.85,
         "f1": 0.72, "roc_auc": roc_auc, "pr_auc": 0.6, "mcc": mcc, "brier": brier, "threshold": threshold,
         "confusion_matrix": [[50, 5], [3, 12]],
         "per_class": {c: {"precision": 0.7, "recall": 0.6, "specificity": 0.9, "f1": 0.65, "support": 10}
                       for c in ("normal", "pneumonia")}}
    return m


def _metrics(classes=("normal", "pneumonia")):
    """Four models inserted out of ROC AUC order; 'c' has an undefined AUC and must come last."""
    def entry(auc, ci, oof_auc, **kw):
        test = _m(auc, **kw)
        return {"test": test, "oof": {**test, "roc_auc": oof_auc},
                "test_ci": {k: [0.55, 0.65] for k in ("pr_auc", "balanced_accuracy", "f1", "recall", "specificity",
                                                      "mcc", "brier")} | {"roc_auc": ci}}

    return {
        "dataset": {"name": "pneumoniamnist", "classes": list(classes),
                    "counts": {"train": {c: 100 + i for i, c in enumerate(classes)},
                               "test": {c: 20 + i for i, c in enumerate(classes)}}},
        "models": {
            "a": entry(0.80, [0.74, 0.86], 0.81),
            "b": entry(0.95, [0.91, 0.98], 0.96, brier=0.12),
            "c": entry(math.nan, [math.nan, math.nan], math.nan),
            "d": entry(0.90, [0.85, 0.93], 0.90, brier=0.07, mcc=math.nan),
        },
    }


def _render(metrics=None, **kw):
    args = dict(diagnoses={"ldam": {0: ("ok", "best val loss 0.4"), 1: ("overfitting", "val loss rose")}},
                plots={"ROC": "plots/roc.png", "Training curves: ldam": "plots/curves_ldam.png"},
                notes=["smote fold 1: k_neighbors lowered to 2", "skipped 3 unreadable files"],
                extra={"threshold policy": "youden", "meta-model C": 0.1,
                       "meta-model coefficients": {"ldam": 1.23456, "smote": -0.5}, "run id": "20240101-abc"})
    args.update(kw)
    return render_report(metrics or _metrics(), **args)


def _section(text, start, end):
    return text.split(start, 1)[1].split(end, 1)[0]


def test_leaderboard_rows_in_test_roc_auc_order_with_cis_and_na():
    text = _render()
    assert text.startswith("# medstack report: pneumoniamnist\n")
    board = _section(text, "## Test leaderboard", "## Which model")
    rows = [line for line in board.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [r.split(" | ")[0] for r in rows] == ["| b", "| d", "| a", "| c"]
    assert "| b | 0.950 [0.910, 0.980] | 0.600 [0.550, 0.650] |" in board
    assert rows[0].endswith("| 0.350 |")  # the threshold used
    assert "| d | 0.900 [0.850, 0.930] |" in board and "n/a [0.550, 0.650]" in rows[1]  # nan mcc
    assert rows[3].startswith("| c | n/a |")  # nan AUC with nan CI: no "[n/a, n/a]"
    assert "nan" not in text.lower().replace("non-finite", "")


def test_data_table_and_sections():
    text = _render()
    assert "| split | normal | pneumonia | total |" in text
    assert "| train | 100 | 101 | 201 |" in text and "| test | 20 | 21 | 41 |" in text
    for heading in ("## Which model to trust", "## Out-of-fold", "## Fit diagnosis", "## Warnings and notes",
                    "## Run details", "## Plots"):
        assert heading in text
    assert "## Per-class" not in text  # binary


def test_grouping_line_under_the_data_table_next_to_duplicates():
    metrics = _metrics()
    metrics["dataset"]["duplicates"] = {"groups": 2, "crossing_splits": 0}
    metrics["dataset"]["grouping"] = {
        "kind": "breakhis", "source": "BreakHis file names SOB_<B|M>_<type>-<patient>-<mag>-<seq>.png (patient id)",
        "groups": 82, "images_per_group": {"min": 12, "median": 88.5, "max": 412}, "crossing_splits": 0,
        "crossing_folds": 0,
    }
    data = _section(_render(metrics), "## Data", "## Test leaderboard").splitlines()
    assert data.index("- duplicates: {groups: 2, crossing_splits: 0}") + 1 == data.index(
        "- grouping: {kind: breakhis, source: BreakHis file names SOB_\\<B\\|M>_\\<type>-\\<patient>-\\<mag>-\\<seq>.png "
        "(patient id), groups: 82, images_per_group: {min: 12, median: 88.500, max: 412}, crossing_splits: 0, "
        "crossing_folds: 0}")  # < and | escaped: <type> would otherwise vanish as an HTML tag


def test_recommendation_flags_overlapping_intervals_and_prefers_calibrated():
    advice = _section(_render(), "## Which model to trust", "## Out-of-fold")
    assert "**b** has the highest test ROC AUC (0.950 [0.910, 0.980])" in advice
    assert "overlaps the runner-up **d**" in advice
    assert "**d** has the lowest Brier score (0.070)" in advice


def test_recommendation_says_when_the_lead_is_clear():
    metrics = _metrics()
    metrics["models"]["d"]["test_ci"]["roc_auc"] = [0.85, 0.90]
    advice = _section(_render(metrics), "## Which model to trust", "## Out-of-fold")
    assert "lies above the runner-up **d**'s" in advice and "overlaps" not in advice


def _recommend_d(metrics, paired_b):
    """'d' chosen on OOF; 'b' scores higher on test, paired with 'd' as ``paired_b`` (difference, low, high)."""
    metrics["recommended"] = {"model": "d", "reason": "best OOF ROC AUC"}
    difference, low, high = paired_b
    metrics["models"]["b"]["test_vs_recommended"] = {"model": "d", "roc_auc_difference": difference,
                                                     "ci": [low, high], "share_not_above": 0.2}
    metrics["models"]["a"]["test_vs_recommended"] = {"model": "d", "roc_auc_difference": -0.1,
                                                     "ci": [-0.14, -0.06], "share_not_above": 1.0}
    return _section(_render(metrics), "## Which model to trust", "## Out-of-fold")


def test_recommendation_chosen_on_oof_judges_the_test_leader_by_the_paired_difference():
    # d's 0.90 lies below b's own interval [0.91, 0.98], which the unpaired rule calls beyond noise; the paired
    # interval of the gap holds 0, and it decides.
    advice = _recommend_d(_metrics(), (0.05, -0.002, 0.09))
    assert "**d** is recommended, chosen on out-of-fold predictions only" in advice
    assert "the difference is +0.0500 (95% interval -0.0020 to +0.0900), within test-set noise" in advice
    rows = [line for line in advice.splitlines() if line.startswith("| ") and "model" not in line]
    assert rows == ["| b | +0.0500 | -0.0020 to +0.0900 |", "| a | -0.1000 | -0.1400 to -0.0600 |"]
    beyond = _recommend_d(_metrics(), (0.05, 0.01, 0.09))
    assert "(95% interval +0.0100 to +0.0900), beyond test-set noise; switching to it" in beyond


def test_recommendation_chosen_on_oof_without_paired_figures_falls_back_to_the_intervals():
    metrics = _metrics()
    metrics["recommended"] = {"model": "d", "reason": "best OOF ROC AUC"}
    advice = _section(_render(metrics), "## Which model to trust", "## Out-of-fold")
    assert "beyond what the bootstrap interval explains" in advice and "paired" not in advice


@pytest.mark.parametrize("oof, phrase", [(0.96, "agree"), (1.0, "optimistic"), (0.85, "luck")])
def test_recommendation_compares_oof_with_test(oof, phrase):
    metrics = _metrics()
    metrics["models"]["b"]["oof"]["roc_auc"] = oof
    advice = _section(_render(metrics), "## Which model to trust", "## Out-of-fold")
    assert phrase in advice
    assert all(p in ("agree", phrase) or p not in advice for p in ("agree", "optimistic", "luck"))


def test_oof_table_has_the_gap():
    oof = _section(_render(), "## Out-of-fold", "## Fit diagnosis")
    rows = {line.split(" | ")[0][2:]: line for line in oof.splitlines() if line.startswith("| ")}
    assert rows["b"].startswith("| b | 0.960 |") and rows["b"].endswith("| -0.010 |")  # 0.95 test - 0.96 OOF
    assert rows["d"].endswith("| 0.000 |") and rows["c"].endswith("| n/a |")


def test_fit_diagnosis_table_and_heuristics_note():
    fit = _section(_render(), "## Fit diagnosis", "## Warnings")
    assert "heuristics" in fit and "1 of 2 trainings flagged" in fit
    assert "| ldam | 1 | ok | best val loss 0.4 |" in fit and "| ldam | 2 | overfitting | val loss rose |" in fit


def test_notes_run_details_and_image_links():
    text = _render()
    notes = _section(text, "## Warnings and notes", "## Run details")
    assert "- smote fold 1: k_neighbors lowered to 2" in notes and "- skipped 3 unreadable files" in notes
    details = _section(text, "## Run details", "## Plots")
    assert "- threshold policy: youden" in details and "- meta-model C: 0.100" in details
    assert "- meta-model coefficients: {ldam: 1.235, smote: -0.500}" in details
    assert "![ROC](plots/roc.png)" in text and "![Training curves: ldam](plots/curves_ldam.png)" in text
    assert "- none" in _section(_render(notes=[]), "## Warnings and notes", "## Run details")


def test_multiclass_report_has_per_class_rows_and_argmax():
    metrics = _metrics(classes=("a0", "a1", "a2"))
    for result in metrics["models"].values():
        result["test"]["threshold"] = None
        result["test"]["per_class"] = {c: {"precision": 0.5, "recall": 0.25, "specificity": 0.75, "f1": math.nan,
                                           "support": 7} for c in ("a0", "a1", "a2")}
    text = _render(metrics)
    per_class = _section(text, "## Per-class test metrics", "## Fit diagnosis")
    assert "| b | a2 | 0.500 | 0.250 | 0.750 | n/a | 7 |" in per_class
    assert per_class.index("| b | a0 |") < per_class.index("| d | a0 |") < per_class.index("| a | a0 |")
    assert _section(text, "## Test leaderboard", "## Which model").splitlines()[-2].endswith("| argmax |")
