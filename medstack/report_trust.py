"""The report's "Prediction sets and referral" section, from metrics.json's ``conformal`` and each model's
``conformal`` and ``referral`` entries (:func:`medstack.models.trust.judge_trust`).

It says which guarantee holds (exact split conformal, or empirical coverage only), how many calibration images
each class had and which levels were refused for which class, then per model and level the test coverage of every
class with its Clopper-Pearson interval, the mean set size and the shares of single-class and empty sets, and the
referral rule with what it does on test. Runs from before conformal calibration get no section.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medstack.models.conformal import format_level, min_count
from medstack.models.trust import describe_rule
from medstack.report_text import cell, format_number

HEADING = "## Prediction sets and referral"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


def _share(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.1%}"


def _guarantee(setup: Mapping[str, Any], levels: Sequence[float]) -> list[str]:
    counts = setup["calibration_counts"]
    per_class = ", ".join(f"{name} {n}" for name, n in counts.items())
    shown = " and ".join(format_level(lv) for lv in levels)
    if setup["kind"] == "split":
        return [f"**Guarantee: exact split conformal, class by class.** For a new image of class y from the same "
                f"population as the training data, P(y is in its {format_level(levels[0])} set) >= "
                f"{format_level(levels[0])} (likewise at every level: {shown}), for every model below. The sets were "
                f"calibrated on a held-out slice of {setup['calibration_share']:.0%} of the training split "
                f"({setup['calibration_rows']} images: {per_class}) that no fold model, meta-model, temperature or "
                f"decision learned from. It is a long-run share over images of each class, not a statement about one "
                f"image, and it does not hold for images from another site or scanner (`medstack evaluate`)."]
    return [f"**Empirical coverage only.** The sets were calibrated on the out-of-fold predictions "
            f"({setup['calibration_rows']} images: {per_class}), which come from single fold models, not from "
            f"their average or the stack that is deployed: no level is promised. Quote the coverage measured on the "
            f"test split below, not the nominal {shown}."]


def _refusals(setup: Mapping[str, Any], levels: Sequence[float]) -> list[str]:
    counts = setup["calibration_counts"]
    lines = []
    for level in levels:
        need = min_count(level)
        short = [f"{name} ({n})" for name, n in counts.items() if n < need]
        if short:
            lines.append(f"- {format_level(level)} needs at least {need} calibration images of a class; refused for "
                         f"{', '.join(short)}: that class is in every {format_level(level)} set (the sets stay valid "
                         f"but say nothing about it) and its coverage is shown as not available.")
    return lines or [f"- Every class has enough calibration images for every level (at least "
                     f"{min_count(max(levels))} for {format_level(max(levels))})."]


def _reached(value: bool | None) -> str:
    """On the calibration rows: yes, no (best recall within the budget), or n/a (no target set)."""
    return "n/a" if value is None else "yes" if value else "no: best recall within the budget"


def _coverage_rows(models: Mapping[str, Mapping[str, Any]], classes: list[str]) -> list[list[Any]]:
    rows = []
    for name, result in models.items():
        for entry in result["conformal"]["levels"]:
            cover = [("not available" if not c["available"] else
                      f"{format_number(c['coverage'])} [{format_number(c['ci_low'])}, {format_number(c['ci_high'])}]")
                     for c in entry["coverage"]]
            rows.append([name, format_level(entry["level"]), *cover, f"{entry['mean_size']:.2f}",
                         _share(entry["single"]), _share(entry["empty"])])
    return rows


def _referral_rows(models: Mapping[str, Mapping[str, Any]], binary: bool) -> list[list[Any]]:
    rows = []
    for name, result in models.items():
        ref = result["referral"]
        test, cal = ref["test"], ref["point"].get("on_calibration", {})
        kept = ([format_number(test.get("sensitivity")), format_number(test.get("specificity"))] if binary else
                [format_number(min((r for r in test["recall"] if r is not None), default=None))])
        everyone = result["test"]
        before = ([format_number(everyone.get("recall")), format_number(everyone.get("specificity"))] if binary
                  else [])
        threshold = ([format_number(ref["point"].get("threshold")), _reached(ref["point"].get("reached"))]
                     if ref["point"]["rule"] == "certainty" else [])
        rows.append([name, *threshold, _share(cal.get("referred")), _share(test["referred"]), *kept,
                     format_number(test.get("balanced_accuracy")), *before,
                     format_number(everyone.get("balanced_accuracy"))])
    return rows


def trust_section(metrics: Mapping[str, Any]) -> list[str]:
    """The section's markdown lines; empty for a run without conformal calibration."""
    setup = metrics.get("conformal")
    models = {n: r for n, r in metrics["models"].items() if r.get("conformal") and r.get("referral")}
    if not setup or not models:
        return []
    classes = list(metrics["dataset"]["classes"])
    binary = len(classes) == 2
    levels = list(setup["levels"])
    first = next(iter(models.values()))
    out = [HEADING, "", *_guarantee(setup, levels), "",
           "A model's set at level L holds every class its calibration cannot rule out at that level. The "
           f"nonconformity score of class y is {first['conformal']['score']}; the p-value of y is the share of "
           "class-y calibration images that looked at least as unlike class y (counting the image itself), and y "
           "is in the set when its p-value exceeds 1 - L. An empty set, shown `{}`, means no class is plausible: "
           "the image looks unlike the calibration images of every class; it is referred.", "",
           *_refusals(setup, levels), "",
           "Test coverage per class (share of the class's test images whose set holds it, 95% Clopper-Pearson "
           "interval), mean set size and the shares of single-class and empty sets:", "",
           *_table(["model", "level", *classes, "mean set size", "single-class", "empty"],
                   _coverage_rows(models, classes)), ""]
    point = first["referral"]["point"]
    out += [f"**Referral rule** (chosen on the calibration rows only, applied unchanged to test and new images): "
            f"{describe_rule(point, classes, with_threshold=False)}. Certainty score: {first['referral']['certainty']}. The risk-coverage "
            "plot refers the least certain test images first, 0% to 50%.", ""]
    kept = ["kept sensitivity", "kept specificity"] if binary else ["lowest kept class recall"]
    before = ["sensitivity (all)", "specificity (all)"] if binary else []
    threshold = ["certainty threshold", "recall target reached"] if point["rule"] == "certainty" else []
    out += _table(["model", *threshold, "referred (calibration)", "referred (test)", *kept, "kept balanced accuracy", *before,
                   "balanced accuracy (all)"], _referral_rows(models, binary))
    return out
