"""Conformal coverage and referral of a finished run, from its prediction tables alone (no model is loaded).

For every model of each run folder given, at each level (default 90% and 95%):

1. Calibration judged on test, per class and level (test coverage with its 95% Clopper-Pearson interval, mean set
   size, single-class and empty shares), for each calibration a run has: the held-out slice
   (``calibration_predictions.csv``, kind ``split``: what the run ships, an exact class-conditional guarantee) and
   the out-of-fold predictions (``oof_predictions.csv``, kind ``oof``: the fold models' scores, so no nominal
   promise for the deployed model).
2. Split conformal by re-splitting: the calibration-slice and test rows, all scored by the deployed model and never
   learned from, are exchangeable by construction; ``--resplits`` (>= 100) random stratified splits of them pooled
   into a calibration part (``--cal-share``) and an evaluation part give the mean class-conditional coverage of
   split calibration, the mean set size and the number of re-splits where a class was refused (too few calibration
   rows). OOF rows are not pooled in: they were scored by other models (the fold models), so they are not
   exchangeable with test rows.
3. Referral, stacking against the best member (best out-of-fold ROC AUC among the single strategies): the
   risk-coverage curve on test (certainty from the OOF calibration, decisions as the run chose them) and, per
   target, the least referral at which the kept sensitivity (binary) or balanced accuracy (K > 2) reaches it.

    python benchmarks/conformal_coverage.py runs/<run-id> [runs/<other> ...]
    python benchmarks/conformal_coverage.py runs/<run-id> --resplits 200 --json /tmp/coverage.json

Reads CSVs and does NumPy only: seconds per run, not minutes.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medstack.models.conformal import coverage_by_class, fit_conformal, format_level, set_summary
from medstack.models.decision import apply_decision
from medstack.models.referral import certainty, risk_coverage
from medstack.run_folder import (read_calibration_predictions, read_metrics, read_oof_predictions, read_positive_class,
                                 read_test_predictions)

ENSEMBLES = ("stacking", "soft_voting")
FINE = tuple(round(0.01 * i, 2) for i in range(51))  # 0% to 50% referred, for "the least referral reaching S"


@dataclass(frozen=True)
class Run:
    name: str
    classes: list[str]
    positive: int | None  # binary only
    oof_y: np.ndarray
    oof: dict[str, np.ndarray]
    test_y: np.ndarray
    test: dict[str, np.ndarray]
    decisions: dict[str, dict]
    best_member: str
    cal_y: np.ndarray | None = None  # the held-out calibration slice (calibration_predictions.csv), if the run has one
    cal: dict[str, np.ndarray] | None = None


def load_run(run_dir: Path) -> Run:
    metrics = read_metrics(run_dir)
    oof, test = read_oof_predictions(run_dir), read_test_predictions(run_dir)
    cal = read_calibration_predictions(run_dir)
    classes = list(metrics["dataset"]["classes"])
    models = metrics["models"]
    members = [m for m in models if m not in (*ENSEMBLES, "student")]
    best = max(members, key=lambda m: (models[m].get("oof") or {}).get("roc_auc") or -1.0)
    return Run(name=run_dir.name, classes=classes,
               positive=read_positive_class(run_dir) if len(classes) == 2 else None,
               oof_y=oof.labels.astype(np.int64), oof=oof.probas, test_y=test.labels.astype(np.int64),
               test=test.probas, decisions={m: models[m]["decision"] for m in models}, best_member=best,
               cal_y=None if cal is None else cal.labels.astype(np.int64), cal=None if cal is None else cal.probas)


def calibrated_on_test(run: Run, model: str, levels: tuple[float, ...], kind: str) -> list[dict]:
    """Sets calibrated on the OOF predictions (``oof``) or on the held-out slice (``split``, what the run ships),
    judged on the test rows."""
    y, proba = (run.oof_y, run.oof[model]) if kind == "oof" else (run.cal_y, run.cal[model])
    calibration = fit_conformal(y, proba, kind=kind, levels=levels)
    rows = []
    for lv in levels:
        sets = calibration.prediction_sets(run.test[model], lv)
        summary = set_summary(sets)
        for row in coverage_by_class(run.test_y, sets, calibration.unavailable(lv)):
            rows.append({**row, **summary, "level": lv, "class": run.classes[row["class"]]})
    return rows


def _stratified_part(y: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask holding ``share`` of each class's rows (at least one, never all)."""
    part = np.zeros(len(y), bool)
    for k in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == k))
        part[rows[: min(max(1, round(share * len(rows))), len(rows) - 1)]] = True
    return part


def resplit_coverage(y: np.ndarray, proba: np.ndarray, levels: tuple[float, ...], resplits: int, share: float,
                     seed: int) -> list[dict]:
    """Mean class-conditional coverage of split calibration over random re-splits of exchangeable rows."""
    rng = np.random.default_rng(seed)
    k = proba.shape[1]
    cov = {lv: np.full((resplits, k), np.nan) for lv in levels}
    refused = {lv: np.zeros(k, int) for lv in levels}
    size = {lv: np.empty(resplits) for lv in levels}
    for r in range(resplits):
        cal = _stratified_part(y, share, rng)
        calibration = fit_conformal(y[cal], proba[cal], kind="split", levels=levels)
        for lv in levels:
            sets = calibration.prediction_sets(proba[~cal], lv)
            size[lv][r] = sets.sum(axis=1).mean()
            refused[lv] += ~calibration.available(lv)
            for c in range(k):
                if calibration.available(lv)[c] and np.any(y[~cal] == c):
                    cov[lv][r, c] = sets[y[~cal] == c, c].mean()
    return [{"level": lv, "class": c, "mean_coverage": _nanmean(cov[lv][:, c]), "refused": int(refused[lv][c]),
             "mean_size": float(size[lv].mean()), "resplits": resplits} for lv in levels for c in range(k)]


def _nanmean(values: np.ndarray) -> float | None:
    return float(np.nanmean(values)) if np.isfinite(values).any() else None


def referral_curve(run: Run, model: str, levels: tuple[float, ...], fractions=FINE) -> list[dict]:
    calibration = fit_conformal(run.oof_y, run.oof[model], kind="oof", levels=levels)
    cert = certainty(calibration.p_values(run.test[model]))
    decided = apply_decision(run.test[model], run.decisions[model])
    return risk_coverage(run.test_y, decided, cert, n_classes=len(run.classes), positive_class=run.positive,
                         fractions=fractions)


def least_referral(curve: list[dict], key: str, target: float) -> float | None:
    """The smallest referred share whose kept ``key`` reaches ``target``; None when 50% is not enough."""
    reached = [row["referred"] for row in curve if row[key] is not None and row[key] >= target]
    return min(reached) if reached else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def print_run(run: Run, levels: tuple[float, ...], args: argparse.Namespace) -> dict:
    out: dict = {"run": run.name, "best_member": run.best_member, "oof_on_test": {}, "split_on_test": {},
                 "resplit": {}, "referral": {}}
    cal_rows = 0 if run.cal_y is None else len(run.cal_y)
    print(f"\n## {run.name}: {len(run.test_y)} test rows, {len(run.oof_y)} OOF rows, {cal_rows} calibration-slice "
          f"rows, classes {run.classes}\n")
    kinds = [("oof", "OOF calibration judged on test (empirical coverage, no nominal promise)")]
    if run.cal is not None:
        kinds.insert(0, ("split", "Held-out slice calibration judged on test (what the run ships: exact guarantee)"))
    for kind, title in kinds:
        print(f"{title}:\n")
        print("| model | level | class | n | coverage % | 95% CI | mean set size | single % | empty % |")
        print("|---|---|---|---|---|---|---|---|---|")
        for model in (m for m in run.test if kind == "split" or m in run.oof):  # the student has no OOF rows
            rows = out[f"{kind}_on_test"][model] = calibrated_on_test(run, model, levels, kind)
            for r in rows:
                shown = _pct(r["coverage"]) if r["available"] else "refused"
                print(f"| {model} | {format_level(r['level'])} | {r['class']} | {r['n']} | {shown} | "
                      f"{_pct(r['ci_low'])}-{_pct(r['ci_high'])} | {r['mean_size']:.2f} | {_pct(r['single'])} | "
                      f"{_pct(r['empty'])} |")
        print()
    pool = "test rows" if run.cal is None else "calibration-slice and test rows pooled"
    print(f"Split conformal over {args.resplits} re-splits of the {pool} ({args.cal_share:.0%} calibration):\n")
    print("| model | level | class | mean coverage % | re-splits refused | mean set size |")
    print("|---|---|---|---|---|---|")
    for model, proba in run.test.items():
        y, pooled = run.test_y, proba
        if run.cal is not None:  # both scored by the deployed model and learned from by nothing: exchangeable
            y, pooled = np.concatenate([run.cal_y, run.test_y]), np.concatenate([run.cal[model], proba])
        rows = out["resplit"][model] = resplit_coverage(y, pooled, levels, args.resplits, args.cal_share, args.seed)
        for r in rows:
            print(f"| {model} | {format_level(r['level'])} | {run.classes[r['class']]} | {_pct(r['mean_coverage'])} "
                  f"| {r['refused']} | {r['mean_size']:.2f} |")
    key = "sensitivity" if run.positive is not None else "balanced_accuracy"
    print(f"\nReferral on test (certainty: conformal confidence from the OOF calibration), kept {key}:\n")
    compared = [m for m in ("stacking", run.best_member) if m in run.test]
    curves = {m: referral_curve(run, m, levels) for m in compared}
    print("| referred target % | " + " | ".join(f"{m} referred % | {m} kept {key} %" for m in compared) + " |")
    print("|---|" + "---|---|" * len(compared))
    for i, f in enumerate(FINE):
        if round(f * 100) % 5 == 0:
            print(f"| {f:.0%} | " + " | ".join(f"{_pct(curves[m][i]['referred'])} | {_pct(curves[m][i][key])}"
                                               for m in compared) + " |")
    print(f"\nLeast referral reaching a kept {key}:\n")
    print("| target | " + " | ".join(compared) + " |")
    print("|---|" + "---|" * len(compared))
    for target in args.targets:
        print(f"| {target:.0%} | " + " | ".join(_pct(least_referral(curves[m], key, target)) for m in compared) + " |")
    out["referral"] = {"key": key, "curves": curves}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--resplits", type=int, default=200, help="random re-splits of the test rows (>= 100)")
    parser.add_argument("--cal-share", type=float, default=0.5, help="share of each class's rows that calibrates")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.95, 0.98],
                        help="kept sensitivity (binary) or balanced accuracy (K > 2) to reach by referral")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args(argv)
    if args.resplits < 100:
        parser.error("--resplits must be at least 100")
    results = [print_run(load_run(run_dir), tuple(args.levels), args) for run_dir in args.runs]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
