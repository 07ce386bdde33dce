"""The markdown report of a run: leaderboard with CIs, which model to trust and why, fit diagnosis per fold.

The plots it links are drawn by :mod:`medstack.plots`; the fit verdicts come from :mod:`medstack.fit_diagnosis`.
The Prefect UI shows the same text (:func:`ui_markdown`, plots inlined). Everything is written as sentences and
tables for people; metrics.json keeps the structure.

Inputs are the metrics dict of :func:`medstack.pipeline.evaluate_on_test`, the test probabilities per model and the
training histories per strategy and fold (``loss``, ``val_loss``, ``accuracy``, ``val_accuracy``, ``loss_phase``).
:func:`run_report` composes a run's report from the DAG's results; the run folder's writer only writes it.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medstack.fit_diagnosis import (
    MIN_EPOCHS, OVERFIT_MIN_DELTA, OVERFIT_RISE, UNDERFIT_FLAT, UNDERFIT_VAL_GAIN, diagnose_all,
)
from medstack.report_text import (
    calibration_summary, cell, decision_policy_summary, detail_lines, duplicates_sentence, fmt_value, fold_notes,
    format_number, grouping_sentence, is_nan,
)
from medstack.report_student import student_section
from medstack.report_trust import trust_section
from medstack.run_folder import HEADLINE_METRICS, RECOMMENDED, REPORT_FILE, recommended_model

if TYPE_CHECKING:
    from medstack.config import RunConfig
    from medstack.pipeline import EnsembleFit, PreparedData

OPTIMISM_GAP = 0.05  # OOF ROC AUC this much above test: the OOF estimate was optimistic


def _ci(result: Mapping, key: str) -> tuple[float, float] | None:
    ci = (result.get("test_ci") or {}).get(key)
    if not ci or all(is_nan(v) or v is None for v in ci):
        return None
    return float(ci[0]), float(ci[1])


def _with_ci(result: Mapping, key: str) -> str:
    """``0.912 [0.880, 0.940]``; the point alone when no interval was computed."""
    point = format_number(result["test"].get(key))
    ci = _ci(result, key)
    return point if ci is None else f"{point} [{format_number(ci[0])}, {format_number(ci[1])}]"


def _decision(result: Mapping, class_names: list[str]) -> str:
    """The model's decision rule: its OOF-chosen threshold or class offsets (older runs: the test threshold)."""
    if result.get("decision"):
        from medstack.models.decision import describe_decision

        return describe_decision(result["decision"], class_names)
    t = result["test"].get("threshold")
    return "argmax" if t is None else format_number(t)


def _desc(value: Any) -> tuple[bool, float]:
    """Sort key: larger first, nan/None last."""
    return (True, 0.0) if value is None or is_nan(value) else (False, -float(value))


def _asc(value: Any) -> tuple[bool, float]:
    """Sort key: smaller first, nan/None last."""
    return (True, 0.0) if value is None or is_nan(value) else (False, float(value))


def _ranked(models: Mapping) -> list[str]:
    """Model names by test ROC AUC, then balanced accuracy (nan last; ties keep the given order)."""
    return sorted(models, key=lambda n: (_desc(models[n]["test"].get("roc_auc")),
                                         _desc(models[n]["test"].get("balanced_accuracy"))))


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


def _recommendation(models: Mapping, recommended: Mapping | None = None) -> list[str]:
    """Which model to trust: the one chosen on OOF numbers (``recommended``) checked against the test split; for
    runs without one, the best test ROC AUC. Then whether its CI overlaps others' and its OOF-vs-test gap."""
    order = _ranked(models)
    if not order:
        return ["No models were evaluated."]
    best, why = recommended_model(recommended, models)
    if why == RECOMMENDED:
        return _chosen_on_oof(models, order, recommended)
    if best is None:
        return ["No model has a defined test ROC AUC (the test split lacks a class?): rank by the confusion "
                "matrices and balanced accuracy instead."]
    lines = [f"**{best}** has the highest test ROC AUC ({_with_ci(models[best], 'roc_auc')})."]
    best_ci = _ci(models[best], "roc_auc")
    if len(order) > 1:
        second = order[1]
        second_ci = _ci(models[second], "roc_auc")
        if best_ci is None or second_ci is None:
            lines.append(f"No bootstrap interval was computed, so its lead over **{second}** "
                         f"({_with_ci(models[second], 'roc_auc')}) cannot be judged against test-set noise.")
        else:
            tied = [n for n in order[1:] if (ci := _ci(models[n], "roc_auc")) is not None and ci[1] >= best_ci[0]]
            if second in tied:
                calibrated = min([best, *tied], key=lambda n: _asc(models[n]["test"].get("brier")))
                lines.append(
                    f"Its 95% interval overlaps the runner-up **{second}**'s ({_with_ci(models[second], 'roc_auc')}): "
                    f"the test split cannot tell them apart. Models whose interval reaches its lower bound: "
                    f"{', '.join(tied)}. Of these and {best}, **{calibrated}** has the lowest Brier score "
                    f"({format_number(models[calibrated]['test'].get('brier'))}); prefer the simpler or better-calibrated one."
                )
            else:
                lines.append(f"Its 95% interval lies above the runner-up **{second}**'s "
                             f"({_with_ci(models[second], 'roc_auc')}): the lead is larger than test-set noise.")
    return lines + _optimism(models[best])


def _chosen_on_oof(models: Mapping, order: list[str], recommended: Mapping) -> list[str]:
    name = recommended["model"]
    lines = [f"**{name}** is recommended, chosen on out-of-fold predictions only (the test split chose nothing): "
             f"{recommended.get('reason', '')}.",
             f"On the untouched test split it scores ROC AUC {_with_ci(models[name], 'roc_auc')}."]
    best = order[0]
    if best != name and not is_nan(models[best]["test"].get("roc_auc", math.nan)):
        paired = _paired(models[best], name)
        if paired is not None:
            within = paired[1] <= 0 <= paired[2]
            lines.append(f"**{best}** scores higher on test ({_with_ci(models[best], 'roc_auc')}); paired with it on "
                         f"the same test images the difference is {_signed(paired[0])} (95% interval "
                         f"{_signed(paired[1])} to {_signed(paired[2])}), "
                         + ("within test-set noise: the test split cannot tell them apart." if within else
                            "beyond test-set noise; switching to it would be choosing on the test split, so confirm "
                            "on new data first."))
        else:
            best_ci, mine = _ci(models[best], "roc_auc"), models[name]["test"].get("roc_auc")
            if best_ci is not None and mine is not None and not is_nan(mine) and mine >= best_ci[0]:
                lines.append(f"**{best}** scores higher on test ({_with_ci(models[best], 'roc_auc')}), within "
                             "test-set noise of the recommended model: the test split cannot tell them apart.")
            else:
                lines.append(f"**{best}** scores higher on test ({_with_ci(models[best], 'roc_auc')}), beyond what "
                             "the bootstrap interval explains; switching to it would be choosing on the test split, "
                             "so confirm on new data first.")
    return lines + _optimism(models[name]) + _paired_table(models, order, name)


def _paired(result: Mapping, recommended: str) -> tuple[float, float, float] | None:
    """(difference, low, high) of this model's test ROC AUC minus the recommended one's, paired; None if absent."""
    paired = result.get("test_vs_recommended")
    if not paired or paired.get("model") != recommended:
        return None
    low, high = paired["ci"]
    return paired["roc_auc_difference"], low, high


def _signed(value: float) -> str:
    return f"{value:+.4f}"


def _paired_table(models: Mapping, order: list[str], recommended: str) -> list[str]:
    """Every other model's paired test ROC AUC difference from the recommended one, in leaderboard order."""
    rows = [[n, _signed(p[0]), f"{_signed(p[1])} to {_signed(p[2])}"]
            for n in order if n != recommended and (p := _paired(models[n], recommended)) is not None]
    if not rows:
        return []
    return ["", f"Every other model's test ROC AUC minus {recommended}'s, each pair scored on the same resampled "
                "test images (paired bootstrap); an interval that holds 0 is a difference the test split cannot "
                "show:", "", *_table(["model", f"minus {recommended}", "95% interval"], rows)]


def _optimism(result: Mapping) -> list[str]:
    """The OOF-vs-test comparison of one model: optimistic CV, lucky test split, or agreement."""
    lines: list[str] = []
    oof, test = result.get("oof", {}).get("roc_auc", math.nan), result["test"]["roc_auc"]
    if is_nan(oof) or oof is None:
        lines.append("Its out-of-fold ROC AUC is not available, so the CV estimate cannot be checked for optimism.")
    elif oof - test > OPTIMISM_GAP:
        lines.append(f"Its out-of-fold ROC AUC ({format_number(oof)}) is {oof - test:.3f} above the test one ({format_number(test)}): "
                     "the cross-validated figure was optimistic; quote the test figure.")
    elif test - oof > OPTIMISM_GAP:
        lines.append(f"Its test ROC AUC is {test - oof:.3f} above the out-of-fold one ({format_number(oof)}): likely luck of "
                     "a small test split; expect something nearer the OOF figure on new data.")
    else:
        lines.append(f"Out-of-fold ({format_number(oof)}) and test ({format_number(test)}) ROC AUC agree within {OPTIMISM_GAP}: "
                     "no sign of optimism.")
    return lines


def _data_section(ds: Mapping) -> list[str]:
    classes = list(ds["classes"])
    rows = [[split, *(counts.get(c, 0) for c in classes), sum(counts.values())] for split, counts in ds["counts"].items()]
    out = ["## Data", "", *_table(["split", *classes, "total"], rows)]
    more = [f"- {cell(duplicates_sentence(ds['duplicates']))}"] if "duplicates" in ds else []
    more += [f"- {cell(grouping_sentence(ds['grouping']))}"] if "grouping" in ds else []
    more += [f"- {key}: {cell(fmt_value(value))}" for key, value in ds.items()
             if key not in ("name", "classes", "counts", "duplicates", "grouping")]
    return out + ([""] + more if more else [])


def _argmax_section(models: Mapping, order: list[str], classes: list[str]) -> list[str]:
    """Multi-class: accuracy and balanced accuracy at each model's chosen decision and at plain argmax."""
    intro = ("The leaderboard scores each model at its chosen decision (class offsets chosen on OOF predictions, or "
             "argmax). Published baselines usually quote plain argmax (the most probable class), so both decisions "
             "are shown here, on the test split; they differ only where the chosen offsets move a prediction.")
    rows = [[n, _decision(models[n], classes),
             *(format_number(models[n]["test"].get(k)) for k in ("accuracy", "balanced_accuracy", "argmax_accuracy",
                                                                 "argmax_balanced_accuracy"))] for n in order]
    return ["## Test accuracy: chosen decision and plain argmax", "", intro, "",
            *_table(["model", "chosen decision", "accuracy (chosen)", "balanced accuracy (chosen)",
                     "accuracy (argmax)", "balanced accuracy (argmax)"], rows)]


def _fit_section(diagnoses: Mapping[str, Mapping[int, tuple[str, str]]]) -> list[str]:
    rows = [[s, fold + 1, verdict, why] for s, per in diagnoses.items() for fold, (verdict, why) in per.items()]
    flagged = sum(r[2] in ("overfitting", "underfitting") for r in rows)
    intro = (
        "These verdicts are heuristics on the loss curves, not tests; look at the training-curve plots before acting "
        f"on them. Only the last loss phase is compared (LDAM-DRW changes the loss mid-training). *overfitting*: val "
        f"loss ends over {OVERFIT_RISE:.0%} (and {OVERFIT_MIN_DELTA}) above its minimum while train loss kept falling; "
        f"*underfitting*: train loss ends above {UNDERFIT_FLAT:.0%} of its first value and val loss never fell "
        f"{UNDERFIT_VAL_GAIN:.0%}; *too_short*: under {MIN_EPOCHS} epochs. {flagged} of {len(rows)} trainings flagged."
    )
    return ["## Fit diagnosis (heuristic)", "", intro, "", *_table(["strategy", "fold", "verdict", "why"], rows)]


def _recipe_section(recipe: Mapping[str, Mapping[str, str]]) -> list[str]:
    keys = list(next(iter(recipe.values())))
    intro = ("Budgets are in optimiser steps (`training.min_steps`, `stop_after_steps`, `patience_steps`), so each "
             "fold's epochs follow from its size; ranges are over folds. Early stopping keeps the best weights it saw "
             "from its first watched epoch on.")
    return ["## Training recipe (resolved per fold)", "", intro, "",
            *_table(["strategy", *keys], [[s, *(values[k] for k in keys)] for s, values in recipe.items()])]


def render_report(
    metrics: Mapping, diagnoses: Mapping, plots: Mapping[str, str], notes: list[str], extra: Mapping,
    recipe: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """The run's markdown report: data, leaderboard with CIs, recommendation, OOF, per-class, prediction sets and
    referral, training recipe, fit diagnosis, notes, run details and plots (``plots`` maps a label to a link relative to the report, e.g. ``plots/roc.png``)."""
    ds, models = metrics["dataset"], metrics["models"]
    classes = list(ds["classes"])
    order = _ranked(models)
    out = [f"# medstack report: {ds['name']}", "", *_data_section(ds), ""]
    out += ["## Test leaderboard (95% bootstrap CI)", "",
            "Sorted by test ROC AUC. Binary metrics are for the positive class at each model's threshold; "
            "multi-class ones are macro averages at each model's decision rule (argmax, or class offsets chosen on "
            "OOF predictions for balanced accuracy). Thresholds and offsets were chosen on OOF predictions (the student's, "
            "which has none, on the calibration slice).", ""]
    out += _table(["model", *HEADLINE_METRICS, "decision"],
                  [[n, *(_with_ci(models[n], k) for k in HEADLINE_METRICS), _decision(models[n], classes)]
                   for n in order])
    if len(classes) > 2:
        out += ["", *_argmax_section(models, order, classes)]
    out += ["", "## Which model to trust", "", *_recommendation(models, metrics.get("recommended")), ""]
    out += ["## Out-of-fold (train split) for comparison", "",
            "Cross-validated predictions on the training split; a test ROC AUC far below the OOF one means the CV "
            "estimate was optimistic.", ""]
    rows = []
    for n in order:
        o, t = models[n].get("oof", {}), models[n]["test"]
        gap = (t.get("roc_auc", math.nan) - o.get("roc_auc", math.nan)) if o else math.nan
        rows.append([n, *(format_number(o.get(k)) for k in HEADLINE_METRICS), format_number(gap)])
    out += _table(["model", *HEADLINE_METRICS, "test - OOF roc_auc"], rows)
    if len(ds["classes"]) > 2:
        out += ["", "## Per-class test metrics", ""]
        out += _table(["model", "class", "precision", "recall", "specificity", "f1", "support"], [
            [n, cls, *(format_number(r.get(k)) for k in ("precision", "recall", "specificity", "f1")), format_number(r.get("support"))]
            for n in order for cls, r in models[n]["test"].get("per_class", {}).items()
        ])
    trust = trust_section(metrics)
    out += ["", *trust] if trust else []
    out += ["", *student_section(metrics)] if "student" in metrics else []
    if recipe:
        out += ["", *_recipe_section(recipe)]
    out += ["", *_fit_section(diagnoses), ""]
    out += ["## Warnings and notes", "", *([f"- {cell(n)}" for n in notes] or ["- none"]), ""]
    out += ["## Run details", "", *detail_lines(extra), ""]
    out += ["## Plots", ""]
    for label, link in plots.items():
        out += [f"### {label}", "", f"![{label}]({link})", ""]
    return "\n".join(out).rstrip() + "\n"


def run_report(run_id: str, cfg: RunConfig, prepared: PreparedData, ensembles: EnsembleFit, metrics: Mapping,
               extra: Mapping, plots: Mapping[str, str], recipe: Mapping[str, Mapping[str, str]]) -> str:
    """A run's report.md from the DAG's results: its notes (data preparation's and every fold's), the fit diagnosis
    of every fold, and the run details (calibration, decision rule, meta-model, ``extra`` but its per-fold facts)."""
    preds, meta = ensembles.predictions, ensembles.meta_model
    details = {
        "run id": run_id,
        "calibration": calibration_summary(cfg.training.calibration, preds.fold_info),
        "decision policy": decision_policy_summary(len(prepared.class_names), ensembles.threshold_policy,
                                                   cfg.ensemble.multiclass_policy, cfg.ensemble.critical_classes),
        "meta-model inputs": meta.features,
        "meta-model C": meta.best_C_,
        "meta-model coefficients": meta.coefficients,
        **{k: v for k, v in extra.items() if k != "folds"},
    }
    notes = list(prepared.notes) + fold_notes(preds.fold_info)
    return render_report(metrics, diagnose_all(preds.histories, preds.fold_info), plots, notes, details, recipe)


def ui_markdown(run_dir: Path) -> str:
    """The run's report.md as the Prefect UI artifact shows it: the same text, its PNG links inlined as data URIs
    (the UI cannot reach files on the run's disk)."""
    return inline_images((run_dir / REPORT_FILE).read_text(), run_dir)


def inline_images(markdown: str, base: Path) -> str:
    """Replace relative PNG links with data URIs; a link to a missing file stays as it is."""

    def _inline(match: re.Match[str]) -> str:
        path = base / match.group(2)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    return re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", _inline, markdown)
