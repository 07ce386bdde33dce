"""The evaluation's ``report.md``: the new data beside the run's own test split, for people.

Written from ``evaluation.json``'s content alone (:func:`medstack.evaluation.evaluate.evaluate_scored`), with the
run report's conventions (:mod:`medstack.report_text`: numbers to 3 decimals, "n/a" where undefined, intervals in
brackets). The Prefect artifact is the same text with its plots inlined (:func:`medstack.report.inline_images`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from medstack.models.conformal import format_level
from medstack.models.decision import describe_decision
from medstack.report_text import cell, format_number
from medstack.run_folder import HEADLINE_METRICS

THIS, RUN_TEST = "this data", "run's test split"
PLOTS = {"Reliability": "reliability.png", "Confusion matrices": "confusion.png"}


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)]


def _with_ci(point: Any, ci: Sequence[float] | None) -> str:
    if not ci or any(v is None for v in ci):
        return format_number(point)
    return f"{format_number(point)} [{format_number(ci[0])}, {format_number(ci[1])}]"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def render_evaluation_report(ev: Mapping[str, Any]) -> str:
    """The whole report (plots linked as ``plots/<file>``)."""
    model, data = ev["model"], ev["data"]
    chosen = model["chosen"]
    out = [f"# medstack evaluation: {cell(data['source'])}", "",
           f"Model **{cell(model['source'])}** (run {model['run_id']}, {cell(model['bundle'])}); labels and "
           f"headline figures from **{chosen}** ({cell(model['decision'])}).", "",
           ("Nothing was refitted on this data: every decision, calibration and referral rule is the bundle's, "
            "frozen." if not ev["refitted"] else
            "The numbers below use the bundle's frozen decisions; the recalibration section refits one model on a "
            "stated part of this data and judges it on the rest."), ""]
    out += _data_section(ev)
    out += _metrics_section(ev)
    out += _calibration_section(ev)
    out += _trust_section(ev["models"][chosen], chosen)
    out += _drift_section(ev["drift"])
    if ev.get("recalibration"):
        out += _recalibration_section(ev["recalibration"], ev["classes"])
    out += ["## Plots", ""]
    for label, file in PLOTS.items():
        out += [f"### {label}", "", f"![{label}](plots/{file})", ""]
    return "\n".join(out).rstrip() + "\n"


def _data_section(ev: Mapping[str, Any]) -> list[str]:
    data, classes = ev["data"], ev["classes"]
    rows = [[THIS, *(data["counts"][c] for c in classes), data["images"]]]
    if data.get("run_test_counts"):
        rows.append([RUN_TEST, *(data["run_test_counts"][c] for c in classes), sum(data["run_test_counts"].values())])
    notes = [f"- the data names its classes {', '.join(data['classes_as_named'])}; matched to the model's by name",
             f"- {data['skipped']} image(s) skipped as unreadable" if data["skipped"] else "- no image skipped"]
    return ["## Data", "", *_table(["images", *classes, "total"], rows), "", *notes, ""]


def _metrics_section(ev: Mapping[str, Any]) -> list[str]:
    s = ev["settings"]
    rows = []
    for name, result in ev["models"].items():
        ext, ref = result["external"], result.get("run_test")
        rows.append([name, THIS, *(_with_ci(ext["metrics"].get(k), ext["ci"].get(k)) for k in HEADLINE_METRICS),
                     describe_decision(result["decision"], ev["classes"])])
        if ref:
            rows.append(["", RUN_TEST, *(_with_ci(ref["metrics"].get(k), ref["ci"].get(k)) for k in HEADLINE_METRICS),
                         ""])
    intro = (f"Every model at its frozen decision (chosen on the run's out-of-fold predictions; the student's on its "
             f"calibration slice). Intervals: "
             f"{format_level(s['ci'])} percentile bootstrap, {s['bootstrap']} resamples, seed {s['seed']}, as the run "
             "computed its test intervals. Binary metrics are for the positive class; multi-class ones are macro "
             "averages.")
    out = ["## Metrics beside the run's test split", "", intro, "",
           *_table(["model", "images", *HEADLINE_METRICS, "decision"], rows), ""]
    return out + (_per_class(ev) if len(ev["classes"]) > 2 else [])


def _per_class(ev: Mapping[str, Any]) -> list[str]:
    """K > 2: the chosen model's recall and precision per class, this data beside the run's test split."""
    chosen = ev["model"]["chosen"]
    result = ev["models"][chosen]
    ours = result["external"]["metrics"]["per_class"]
    theirs = ((result.get("run_test") or {}).get("metrics") or {}).get("per_class") or {}
    rows = [[name, ours[name]["support"], format_number(ours[name]["recall"]),
             format_number((theirs.get(name) or {}).get("recall")), format_number(ours[name]["precision"]),
             format_number((theirs.get(name) or {}).get("precision"))] for name in ev["classes"]]
    return [f"Per class, {chosen}:", "", *_table(["class", "images", f"recall, {THIS}", f"recall, {RUN_TEST}",
                                                  f"precision, {THIS}", f"precision, {RUN_TEST}"], rows), ""]


def _calibration_section(ev: Mapping[str, Any]) -> list[str]:
    s = ev["settings"]
    any_model = next(iter(ev["models"].values()))
    intro = (f"Expected calibration error over {s['ece_bins']} equal-width bins of "
             f"{any_model['external']['calibration']['score']}: the image-weighted mean gap between the predicted "
             "and the observed frequency (0 is perfectly calibrated), with its bootstrap interval. The reliability "
             "plot shows the bins.")
    rows = []
    for name, result in ev["models"].items():
        ext, ref = result["external"]["calibration"], (result.get("run_test") or {}).get("calibration")
        rows.append([name, _with_ci(ext["ece"], ext["ece_ci"]),
                     _with_ci(ref["ece"], ref["ece_ci"]) if ref else "n/a"])
    return ["## Calibration", "", intro, "", *_table(["model", f"ECE, {THIS}", f"ECE, {RUN_TEST}"], rows), ""]


def _coverage_cell(row: Mapping[str, Any] | None) -> str:
    if row is None:
        return "n/a"
    if not row["available"]:
        return "not available"
    return f"{_percent(row['coverage'])} [{_percent(row['ci_low'])}, {_percent(row['ci_high'])}]"


def _verdict(row: Mapping[str, Any], level: float) -> str:
    if not row["available"]:
        return "refused: too few calibration rows, the class is in every set"
    if not row["n"]:
        return "no images"
    if row["ci_high"] < level:
        return "lost: the interval lies below the level"
    return "below the level, within noise" if row["coverage"] < level else "holds"


def _coverage_rows(levels: Sequence[Mapping], reference: Sequence[Mapping] | None) -> list[list[Any]]:
    """Per level and class: images, coverage [95% CP] on this data, the reference's, the verdict on this data."""
    ref = {(e["level"], r["class"]): r for e in (reference or []) for r in e["coverage"]}
    return [[format_level(e["level"]), r["class"], r["n"], _coverage_cell(r),
             _coverage_cell(ref.get((e["level"], r["class"]))), _verdict(r, e["level"])]
            for e in levels for r in e["coverage"]]


def _sizes(levels: Sequence[Mapping], reference: Sequence[Mapping] | None) -> list[list[Any]]:
    ref = {e["level"]: e for e in (reference or [])}
    return [[format_level(e["level"]), *(f"{format_number(x['mean_size'])}, {_percent(x['single'])}, "
                                          f"{_percent(x['empty'])}" if x else "n/a" for x in (e, ref.get(e["level"])))]
            for e in levels]


def _trust_section(result: Mapping[str, Any], chosen: str) -> list[str]:
    trust, ref = result["external"]["trust"], (result.get("run_test") or {}).get("trust") or {}
    out = ["## Conformal coverage and referral", ""]
    if not trust["available"]:
        return out + [f"{chosen}: {trust['note']}.", ""]
    conformal, ref_levels = trust["conformal"], (ref.get("conformal") or {}).get("levels")
    out += [f"{chosen}'s prediction sets as the bundle calibrated them ({conformal['kind']}; score "
            f"{conformal['score']}), applied unchanged. Per class and level: the share of its images whose set holds "
            "it, with a 95% Clopper-Pearson interval. Coverage lost on new data, where the run's test split held it, "
            "is the signature of a shifted site.", ""]
    out += [f"- {format_level(e['level'])}: {cell(e['guarantee'])}" for e in conformal["levels"]] + [""]
    out += _table(["level", "class", "images", f"coverage, {THIS}", f"coverage, {RUN_TEST}", f"verdict, {THIS}"],
                  _coverage_rows(conformal["levels"], ref_levels))
    out += ["", *_table(["level", f"mean set size, single-class, empty: {THIS}", RUN_TEST],
                        _sizes(conformal["levels"], ref_levels)), ""]
    referral = trust["referral"]
    mine, theirs = referral["test"], (ref.get("referral") or {}).get("test") or {}
    on_cal = (referral["point"].get("on_calibration") or {}).get("referred")
    kept = ", ".join(f"{k} {format_number(mine.get(k))}" for k in ("sensitivity", "specificity", "balanced_accuracy")
                     if k in mine)
    out += [f"Referral, unchanged: {cell(trust['rule'])}. It refers **{_percent(mine['referred'])}** of this data "
            f"({round(mine['referred'] * mine['n'])} of {mine['n']} images), against {_percent(theirs.get('referred'))} "
            f"of the run's test split and {_percent(on_cal)} of its calibration rows. Kept cases on this data: {kept}.",
            f"Reasons: {', '.join(f'{k} {n}' for k, n in trust['reasons'].items()) or 'none'}.", ""]
    return out


def _drift_section(drift: Mapping[str, Any]) -> list[str]:
    out = ["## Drift guard", "",
           f"{drift['warned']} of {drift['images']} images ({_percent(drift['share'])}) look unlike the training "
           "images (size, colour, bit depth, brightness or contrast far outside the training range); the "
           "'warnings' column of predictions.csv says which and why.", ""]
    if drift["kinds"]:
        out += _table(["warning", "images"], [[k, n] for k, n in drift["kinds"].items()]) + [""]
    return out


def _recalibration_section(rc: Mapping[str, Any], classes: Sequence[str]) -> list[str]:
    fitted, judged = rc["fitted_on"], rc["judged_on"]
    before, after = rc["before"], rc["after"]
    out = ["## Recalibration on this data (asked for with --recalibrate)", "",
           f"{rc['model']} refitted on a stratified {_percent(rc['fraction'])} of each class (seed {rc['seed']}: "
           f"{', '.join(f'{c} {n}' for c, n in fitted.items())}) and judged on the rest "
           f"({', '.join(f'{c} {n}' for c, n in judged.items())}): temperature {rc['temperature']:.3f} on its output "
           f"log-probabilities, decision {describe_decision(before['decision'], classes)} -> "
           f"{describe_decision(after['decision'], classes)}, split conformal quantiles and the referral point "
           "refitted. Before and after are judged on the same images.", ""]
    rows = [[label, *(_with_ci(part["metrics"].get(k), part["ci"].get(k)) for k in HEADLINE_METRICS),
             _with_ci(part["calibration"]["ece"], part["calibration"]["ece_ci"]),
             _percent(part["trust"]["referral"]["test"]["referred"]) if part["trust"] else "n/a"]
            for label, part in (("before (frozen)", before), ("after (refitted)", after))]
    out += _table(["", *HEADLINE_METRICS, "ECE", "referred"], rows) + [""]
    if before["trust"] is None:
        out += ["Coverage before: no conformal calibration in this bundle.", ""]
    prior = {(e["level"], r["class"]): r for e in ((before["trust"] or {}).get("conformal") or {}).get("levels", [])
             for r in e["coverage"]}
    rows = [[format_level(e["level"]), r["class"], r["n"], _coverage_cell(prior.get((e["level"], r["class"]))),
             _coverage_cell(r), _verdict(r, e["level"])] for e in after["trust"]["conformal"]["levels"]
            for r in e["coverage"]]
    out += _table(["level", "class", "images", "coverage (frozen)", "coverage (refitted)", "verdict (refitted)"], rows)
    return out + [""]
