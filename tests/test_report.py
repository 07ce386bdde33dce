"""medstack.report: fit heuristics and the markdown report, on synthetic inputs (no training)."""

import base64
import math

import numpy as np
import pytest

from medstack.fit_diagnosis import diagnose_all, diagnose_fit
from medstack.models.metrics import METRIC_KEYS, bootstrap_ci, compute_metrics
from medstack.report import render_report, ui_markdown

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


# metrics.json's dataset summaries as prepare.prepare_folds writes them (its "summary" sentences go to the notes).
DUPLICATES = {"groups": 27, "images": 54, "crossing_splits": 0, "crossing_folds": 1, "conflicting_labels": 2,
              "handling": "grouped: every duplicate group kept in one split and one fold"}
NO_GROUPING = {"kind": "none", "unit": "image (no data.group_by: images of one patient may land in different splits)"}
BREAKHIS = {
    "kind": "breakhis", "source": "BreakHis file names SOB_<B|M>_<type>-<patient>-<mag>-<seq>.png (patient id)",
    "groups": 82, "images_per_group": {"min": 12, "median": 88.5, "max": 412}, "crossing_splits": 0,
    "crossing_folds": 0, "mixed_class_groups": 1, "merged_by_duplicates": 3,
    "handling": "each group whole in one split and one fold (StratifiedGroupKFold)",
}
# Python reprs and JSON that must never reach the report: dicts, lists of dicts, quoted keys.
DUMPS = ("{", "}", "['", "[{", "': ", '": ')


def _dumps_in(text):
    return [line for line in text.splitlines() if any(p in line for p in DUMPS)]


def test_duplicates_and_grouping_read_as_sentences_under_the_data_table():
    metrics = _metrics()
    metrics["dataset"].update(duplicates=DUPLICATES, grouping=NO_GROUPING)
    data = _section(_render(metrics), "## Data", "## Test leaderboard").splitlines()
    assert data[data.index("| test | 20 | 21 | 41 |") + 1:] == [
        "",
        "- Exact-duplicate images: 27 groups (54 images); 0 cross train/val/test, 1 cross folds; 2 with conflicting "
        "labels; grouped: every duplicate group kept in one split and one fold.",
        "- Patient grouping: none (no `data.group_by`): each image is split on its own, so images of one patient may "
        "land in different splits.",
        ""]


def test_patient_grouping_sentence_carries_its_numbers_escaped():
    metrics = _metrics()
    metrics["dataset"].update(duplicates={**DUPLICATES, "groups": 1, "images": 2}, grouping=BREAKHIS)
    data = _section(_render(metrics), "## Data", "## Test leaderboard").splitlines()
    assert data[-3].startswith("- Exact-duplicate images: 1 group (2 images); 0 cross train/val/test,")
    assert data[-2] == (
        "- Patient grouping (breakhis, ids from BreakHis file names SOB_\\<B\\|M>_\\<type>-\\<patient>-\\<mag>-\\<seq>.png "
        "(patient id)): 82 groups, 12/88.5/412 images per group (min/median/max); 0 cross train/val/test, 0 cross "
        "folds; 1 with images in more than one class; 3 merged with another group through exact-duplicate images; "
        "each group whole in one split and one fold (StratifiedGroupKFold).")  # < and | escaped: <type> would vanish


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
    assert "- meta-model coefficients:\n  - ldam: 1.235\n  - smote: -0.500\n" in details
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
    assert _section(text, "## Test leaderboard", "## Test accuracy").splitlines()[-2].endswith("| argmax |")


# ------------------------------------------------------------------ multi-class: chosen decision and plain argmax

# Three classes, six test images. Plain argmax predicts 0, 0, 0, 1, 0, 2: right on rows 0, 1, 2 and 5, so accuracy
# 4/6 and per-class recall 3/4, 0/1, 1/1 (balanced accuracy 1.75/3). The offsets add 0.8 to log p(a1), which moves
# rows 1-4 to a1 (e.g. row 4: log 0.3 + 0.8 = -0.40 > log 0.6 = -0.51; row 0: log 0.2 + 0.8 = -0.81 < log 0.7):
# predictions 0, 1, 1, 1, 1, 2, right on rows 0, 4 and 5, so accuracy 3/6 and recall 1/4, 1/1, 1/1 (2.25/3).
Y3 = np.array([0, 0, 0, 0, 1, 2])
P3 = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.4, 0.5, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
OFFSETS = [0.0, 0.8, 0.0]
CLASSES3 = ["a0", "a1", "a2"]


def _three_class_metrics():
    """One model scored as evaluate_on_test scores it: compute_metrics and bootstrap_ci at its OOF-chosen offsets."""
    kwargs = dict(threshold=None, offsets=OFFSETS)
    result = {"decision": {"kind": "offsets", "offsets": OFFSETS},
              "test": compute_metrics(Y3, P3, class_names=CLASSES3, **kwargs),
              "oof": compute_metrics(Y3, P3, class_names=CLASSES3, **kwargs),
              "test_ci": {k: list(v) for k, v in bootstrap_ci(Y3, P3, n_boot=50, **kwargs).items()}}
    counts = {"train": {"a0": 40, "a1": 10, "a2": 10}, "test": {"a0": 4, "a1": 1, "a2": 1}}
    return {"dataset": {"name": "derm3", "classes": CLASSES3, "counts": counts, "duplicates": DUPLICATES,
                        "grouping": BREAKHIS},
            "models": {"stacking": result}, "recommended": {"model": "stacking", "reason": "best OOF ROC AUC"}}


def test_multiclass_metrics_add_argmax_figures_and_binary_ones_keep_their_keys():
    m = compute_metrics(Y3, P3, None, class_names=CLASSES3, offsets=OFFSETS)
    assert (m["accuracy"], m["balanced_accuracy"]) == pytest.approx((3 / 6, 2.25 / 3))
    assert (m["argmax_accuracy"], m["argmax_balanced_accuracy"]) == pytest.approx((4 / 6, 1.75 / 3))
    plain = compute_metrics(Y3, P3, None, class_names=CLASSES3)  # no offsets: argmax is the decision
    assert plain["argmax_accuracy"] == plain["accuracy"] == pytest.approx(4 / 6)
    # Binary metrics.json must stay byte-identical: the same keys in the same order, nothing added.
    binary = compute_metrics(np.array([0, 1, 1]), np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), 0.5)
    order = ["accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc",
             "brier", "threshold", "mcc", "confusion_matrix", "per_class"]
    assert list(binary) == order and set(order) == {*METRIC_KEYS, "per_class"}
    assert list(m) == order + ["argmax_accuracy", "argmax_balanced_accuracy"]


def test_multiclass_report_shows_accuracy_at_the_chosen_decision_and_at_plain_argmax():
    text = _render(_three_class_metrics())
    table = _section(text, "## Test accuracy: chosen decision and plain argmax", "## Which model").splitlines()
    assert "| model | chosen decision | accuracy (chosen) | balanced accuracy (chosen) | accuracy (argmax) | " \
           "balanced accuracy (argmax) |" in table
    assert "| stacking | offsets a1 +0.80 | 0.500 | 0.750 | 0.667 | 0.583 |" in table
    assert "## Test accuracy" not in _render()  # binary: one decision, the threshold


@pytest.mark.parametrize("case", ["binary", "three-class"])
def test_no_line_of_the_report_is_a_dict_or_list_dump(case):
    if case == "binary":
        metrics = _metrics()
        metrics["dataset"].update(duplicates=DUPLICATES, grouping=BREAKHIS)
    else:
        metrics = _three_class_metrics()
    # Run details as outputs.write_run passes them: the meta-model's weights are a list per base model.
    extra = {"run id": "20240101-abc", "meta-model inputs": "log_odds", "meta-model C": 1.0,
             "meta-model coefficients": {"ldam": [0.217, -0.1], "smote": [1.5]}, "wall_seconds": 11.6,
             "trained": 8, "cache_hits": 0}
    text = _render(metrics, extra=extra)
    assert _dumps_in(text) == []
    details = _section(text, "## Run details", "## Plots")
    assert "  - ldam: 0.217, -0.100\n" in details and "- wall time of the run (s): 11.600\n" in details
    assert "- fold models trained: 8\n" in details and "- fold models taken from the cache: 0\n" in details


def test_the_ui_artifact_is_the_report_with_its_plots_inlined(tmp_path):
    """tasks.report.publish_artifacts publishes ui_markdown(run folder): the same prose and tables as report.md."""
    report = _render(_three_class_metrics())
    (tmp_path / "report.md").write_text(report)
    (tmp_path / "plots").mkdir()
    png = b"\x89PNG\r\n\x1a\n-a-plot"
    (tmp_path / "plots" / "roc.png").write_bytes(png)  # the curves plot is missing: its link stays a link
    ui = ui_markdown(tmp_path)
    inlined = f"![ROC](data:image/png;base64,{base64.b64encode(png).decode()})"
    assert ui == report.replace("![ROC](plots/roc.png)", inlined)
    assert "![Training curves: ldam](plots/curves_ldam.png)" in ui and _dumps_in(ui) == []
    assert "- Exact-duplicate images: 27 groups (54 images);" in ui and "- Patient grouping (breakhis," in ui
    assert "| stacking | offsets a1 +0.80 | 0.500 | 0.750 | 0.667 | 0.583 |" in ui
