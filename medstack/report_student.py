"""The report's section on the one-network model (``student``, medstack.pipeline.student) and its console line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medstack.report_text import format_number
from medstack.run_folder import STUDENT


def _auc(result: Mapping[str, Any]) -> str:
    ci = (result.get("test_ci") or {}).get("roc_auc")
    point = format_number(result["test"].get("roc_auc"))
    return point if not ci else f"{point} [{format_number(ci[0])}, {format_number(ci[1])}]"


def verdict(student: Mapping[str, Any], paired: Mapping[str, Any] | None) -> str:
    """Whether the student can stand in for the recommended model on this data, and why, in one sentence."""
    teacher, best = student["compared_with"], student["best_member_ece"]
    if student.get("can_replace") is None or paired is None:
        return (f"No paired test interval against {teacher} was computed (report.bootstrap 0, or a test split "
                f"without every class), so whether it can stand in for {teacher} is not judged.")
    low = paired["ci"][0]
    margin, ece_margin = student["criteria"]["roc_auc_margin"], student["criteria"]["ece_margin"]
    ranks = f"its paired interval against {teacher} starts at {low:+.4f}"
    calibration = f"its ECE is {format_number(student['ece'])} against {best['model']}'s {format_number(best['ece'])}"
    if student["can_replace"]:
        return (f"**It can stand in for {teacher} on this data**: {ranks} (above -{margin}) and {calibration} (at "
                f"most {ece_margin} above the best member's). Judged on this run's test split: confirm on new data "
                "(`medstack evaluate --engine student`) before deploying it alone.")
    why = [f"{ranks} (at or below -{margin})" if low <= -margin else None,
           f"{calibration} (over {ece_margin} above)" if student["ece"] > best["ece"] + ece_margin else None]
    return f"**Keep {teacher}**: {' and '.join(w for w in why if w)}."


def student_section(metrics: Mapping[str, Any]) -> list[str]:
    """## One-network model (student): how it was trained and calibrated, its figures beside the recommended
    model's, and the verdict; one line for a run without one."""
    student = metrics.get("student") or {}
    head = ["## One-network model (student)", ""]
    if not student.get("trained"):
        return head + [f"No student was trained ({student.get('why', 'a run from before it')})."]
    models, teacher = metrics["models"], student["compared_with"]
    mine, paired = models[STUDENT], models[STUDENT].get("test_vs_recommended")
    passes = student["passes_per_image"]
    cost = f"{passes['student']} network pass{'' if passes['student'] == 1 else 'es'}"
    intro = (f"The run's network trained once on all {student['trained_rows']} training rows, on the "
             f"{student['learned']}, early-stopped and temperature-scaled on val. Its decision, prediction sets and "
             f"referral point come from the {student['calibration_rows']} rows of the calibration slice, which it "
             f"never trained on. It costs {cost} an image where the ensemble costs {passes['ensemble']}: "
             "`--engine student` of predict, evaluate, serve-model and export scores it alone.")
    difference = "n/a" if paired is None else (f"{paired['roc_auc_difference']:+.4f} ({paired['ci'][0]:+.4f} to "
                                               f"{paired['ci'][1]:+.4f})")
    agreement = student.get("agreement")
    rows = [["test ROC AUC (95% CI)", _auc(mine), _auc(models[teacher]) if teacher in models else "n/a"],
            [f"test ROC AUC minus {teacher}'s, paired (95% interval)", difference, ""],
            [f"test labels equal to {teacher}'s", "n/a" if agreement is None else f"{agreement:.1%}", ""],
            ["expected calibration error (test)", format_number(student["ece"]),
             f"best member: {student['best_member_ece']['model']} {format_number(student['best_member_ece']['ece'])}"],
            ["network passes an image", str(passes["student"]), str(passes["ensemble"])]]
    table = ["| | student | " + f"{teacher} (recommended) |", "|---|---|---|",
             *("| " + " | ".join(row) + " |" for row in rows)]
    return head + [intro, "", *table, "", verdict(student, paired)]


def student_line(metrics: Mapping[str, Any]) -> str | None:
    """The console's line about the student after a run: its test ROC AUC and whether it can stand in for the
    recommended model."""
    student = metrics.get("student") or {}
    if not student.get("trained") or STUDENT not in metrics.get("models", {}):
        return None
    answer = {True: "yes", False: "no", None: "not judged"}[student.get("can_replace")]
    return (f"one-network model (student): test ROC AUC {_auc(metrics['models'][STUDENT])}; can stand in for "
            f"{student['compared_with']} here: {answer} (report.md)")
