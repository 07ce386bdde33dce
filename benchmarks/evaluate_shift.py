"""`medstack evaluate` on shifted copies of a run's test split: coverage and calibration, frozen and recalibrated.

From a MedMNIST-style npz (``test_images``, ``test_labels``) this builds, in ``--work``, three labelled npz files
with the bundle's class names (the same seed gives the same files):

* ``test``: the test split unchanged (the baseline: the bundle's own test split, so its frozen figures are the
  run's ``metrics.json`` figures);
* ``contrast``: every pixel mapped to ``128 + 0.7 * (x - 128) + 20`` (contrast cut by 30% around mid-grey, brightness
  raised by 20 grey levels), rounded and clipped to 0-255, as another scanner or export setting might;
* ``mix``: a resampled class mix: every image of the first class and a seeded draw of the others, a third of the
  first class's count each (PneumoniaMNIST: 234 normal, 78 pneumonia instead of 390), images untouched.

Each goes through the real console command, ``medstack evaluate --model RUN --data <npz> --use <model>
--recalibrate 0.5`` (one call per data set and model), and the evaluation folders' ``evaluation.json`` and
``predictions.csv`` give two markdown tables: the frozen bundle on all images (metrics, ECE, log loss, per-class
coverage at each level with its 95% Clopper-Pearson interval, referral), and before / after ``--recalibrate`` on the
judged half (the other half fitted the temperature, decision, conformal quantiles and referral point).

    python benchmarks/evaluate_shift.py RUN --data ../shared/data/pneumoniamnist.npz --work /tmp/shift
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from medstack.console.quiet import ENVIRONMENT_DEFAULTS
from medstack.evaluation.recalibrate import with_temperature
from medstack.run_folder import read_bundle

REPO = Path(__file__).resolve().parents[1]
CONTRAST, BRIGHTNESS = 0.7, 20.0
MIX_RATIO = 3  # first class : each other class, in the resampled mix


def build_shifts(source: Path, classes: list[str], work: Path, seed: int) -> dict[str, Path]:
    """The three labelled npz files described in the module docstring, written into ``work``."""
    with np.load(source) as data:
        images, labels = data["test_images"], data["test_labels"].reshape(-1).astype(np.int64)
    shifted = np.clip(np.rint(128.0 + CONTRAST * (images.astype(np.float64) - 128.0) + BRIGHTNESS), 0, 255)
    rng = np.random.default_rng(seed)
    first = np.flatnonzero(labels == 0)
    keep = [first] + [np.sort(rng.choice(np.flatnonzero(labels == k), size=len(first) // MIX_RATIO, replace=False))
                      for k in range(1, len(classes))]
    rows = np.concatenate(keep)
    variants = {"test": (images, labels), "contrast": (shifted.astype(images.dtype), labels),
                "mix": (images[rows], labels[rows])}
    work.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (x, y) in variants.items():
        paths[name] = work / f"{name}.npz"
        np.savez(paths[name], images=x, labels=y, class_names=np.array(classes))
    return paths


def evaluate(run: Path, data: Path, model: str, out: Path, fraction: float) -> Path:
    """One ``medstack evaluate`` call; returns its evaluation folder (the command's stdout)."""
    command = [sys.executable, "-m", "medstack", "evaluate", "--model", str(run), "--data", str(data),
               "--output-dir", str(out), "--use", model, "--recalibrate", str(fraction)]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, **ENVIRONMENT_DEFAULTS}, capture_output=True,
                          text=True)
    if done.returncode:
        sys.exit(f"medstack evaluate failed on {data.name} ({model}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None))))


def coverage_cells(trust: dict | None, classes: list[str]) -> list[str]:
    """Per level and class: coverage % with its interval, or "refused"; then the mean set size at the first level."""
    if not trust:
        return ["n/a"] * (2 * len(classes) + 1)
    cells = []
    for entry in trust["conformal"]["levels"]:
        by_class = {row["class"]: row for row in entry["coverage"]}
        for name in classes:
            row = by_class[name]
            cells.append("refused" if not row["available"] else
                         f"{100 * row['coverage']:.1f} [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]")
    return cells + [f"{trust['conformal']['levels'][0]['mean_size']:.2f}"]


def summarise(folder: Path) -> dict:
    """The numbers the tables show, from one evaluation folder."""
    evaluation = json.loads((folder / "evaluation.json").read_text())
    classes, model = evaluation["classes"], evaluation["model"]["chosen"]
    frame = pd.read_csv(folder / "predictions.csv")
    y = frame["label"].map({name: i for i, name in enumerate(classes)}).to_numpy()
    proba = frame[[f"{model}:p({c})" for c in classes]].to_numpy(dtype=np.float64)
    external = evaluation["models"][model]["external"]
    recal = evaluation["recalibration"]
    judged = np.ones(len(y), bool)
    judged[recal["fitted_rows"]] = False
    after = with_temperature(proba, recal["temperature"])
    return {"model": model, "classes": classes, "counts": evaluation["data"]["counts"],
            "drift": evaluation["drift"]["warned"], "external": external, "log_loss": log_loss(y, proba),
            "recal": recal, "judged_log_loss": (log_loss(y[judged], proba[judged]),
                                                log_loss(y[judged], after[judged]))}


def print_tables(results: dict[tuple[str, str], dict], levels: list[float]) -> None:
    any_result = next(iter(results.values()))
    classes = any_result["classes"]
    heads = [f"{level:.0%}: {name}" for level in levels for name in classes]
    print("\nFrozen bundle, all images (coverage %, 95% Clopper-Pearson interval):\n")
    _table_head(["data", "images", "model", "ROC AUC", "bal. acc.", "ECE", "log loss", *heads,
                 f"set size {levels[0]:.0%}", "referred %", "drift warnings"])
    for (data, _), r in results.items():
        ext = r["external"]
        m, trust = ext["metrics"], ext["trust"]
        usable = trust if trust.get("available") else None
        referred = _referred(usable)
        print(f"| {data} | {'/'.join(str(n) for n in r['counts'].values())} | {r['model']} | {m['roc_auc']:.4f} | "
              f"{m['balanced_accuracy']:.4f} | {ext['calibration']['ece']:.4f} | {r['log_loss']:.4f} | "
              + " | ".join(coverage_cells(usable, classes))
              + f" | {referred} | {r['drift']} |")
    print("\n`--recalibrate 0.5`: the judged half, before (frozen) / after (refitted on the other half):\n")
    _table_head(["data", "judged", "model", "T", "bal. acc.", "ECE", "log loss", *heads, f"set size {levels[0]:.0%}",
                 "referred %"])
    for (data, _), r in results.items():
        rc = r["recal"]
        for when in ("before", "after"):
            part = rc[when]
            trust = part.get("trust")
            referred = _referred(trust)
            loss = r["judged_log_loss"][0 if when == "before" else 1]
            judged = "/".join(str(n) for n in rc["judged_on"].values())
            print(f"| {data}, {when} | {judged} | {r['model']} | "
                  f"{1.0 if when == 'before' else rc['temperature']:.3f} | {part['metrics']['balanced_accuracy']:.4f} | "
                  f"{part['calibration']['ece']:.4f} | {loss:.4f} | " + " | ".join(coverage_cells(trust, classes))
                  + f" | {referred} |")


def _table_head(columns: list[str]) -> None:
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")


def _referred(trust: dict | None) -> str:
    """Share of images referred, in %, or n/a without prediction sets."""
    return f"{100 * trust['referral']['test']['referred']:.1f}" if trust else "n/a"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run folder")
    parser.add_argument("--data", type=Path, required=True, help="the MedMNIST-style npz the run's test split is from")
    parser.add_argument("--work", type=Path, required=True, help="where the npz files and evaluation folders go")
    parser.add_argument("--use", nargs="+", default=["stacking"], help="models to evaluate (one call each)")
    parser.add_argument("--fraction", type=float, default=0.5, help="--recalibrate's fitting share")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampled class mix")
    parser.add_argument("--json", type=Path, help="also write the summarised numbers here")
    args = parser.parse_args(argv)
    classes = list(read_bundle(args.run)["classes"])
    paths = build_shifts(args.data, classes, args.work, args.seed)
    results = {}
    for data, path in paths.items():
        for model in args.use:
            folder = evaluate(args.run, path, model, args.work / "evaluations", args.fraction)
            print(f"{data} / {model}: {folder}", file=sys.stderr)
            results[(data, model)] = summarise(folder)
    levels = [entry["level"] for entry in next(iter(results.values()))["recal"]["after"]["trust"]["conformal"]["levels"]]
    print_tables(results, levels)
    if args.json:
        args.json.write_text(json.dumps({f"{d}/{m}": r for (d, m), r in results.items()}, indent=1, default=float))


if __name__ == "__main__":
    main()
