"""The default recipe at three training-set sizes drawn from PneumoniaMNIST: test/OOF quality, epochs, wall time.

Each size is one full `medstack run` of configs/pneumoniamnist.yaml with a stratified, seeded subsample of the
official train and val splits (`data.subset`); the test split is always the full official 624 images. Every run
gets a fresh fold cache, so every fold is trained and the wall time is a cold run's.

    python benchmarks/small_data.py --label after                        # this checkout, all three sizes
    python benchmarks/small_data.py --label after --sizes 546 --keep /tmp/bench   # keep runs and fold cache
    python benchmarks/small_data.py --label before --sizes 546 \\
        --checkout /tmp/medstack-old --command "python -m flows.ensemble"  # an older checkout, its own entry point

Rows are appended to benchmarks/results/small_data.csv (one per model per size) and the whole table is printed as
markdown. The numbers depend on the machine (wall time) and nothing else: seeds are fixed.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medstack.console.quiet import ENVIRONMENT_DEFAULTS
from medstack.run_folder import read_manifest, read_metrics

REPO = Path(__file__).resolve().parents[1]
SIZES = {"546": (546, 78), "1500": (1500, 214), "full": (None, None)}  # train, val (val:train about 1:7)
MODELS = ("stacking", "soft_voting", "ldam", "class_weight", "smote", "custom_loss", "student")  # student: when trained
FIELDS = ("label", "size", "n_train", "model", "test_roc_auc", "test_balanced_accuracy", "oof_roc_auc",
          "epochs_mean", "epochs_min", "epochs_max", "wall_s", "commit")


def append_rows(path: Path, fields: tuple[str, ...], rows: list[dict]) -> None:
    """Append ``rows`` to the csv at ``path`` (the header first when the file is new): every benchmark's record."""
    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def run_one(size: str, args: argparse.Namespace, workdir: Path) -> Path:
    train, val = SIZES[size]
    checkout = Path(args.checkout).resolve()
    command = [*shlex.split(args.command), "--config", str(checkout / "configs" / "pneumoniamnist.yaml"),
               "--data", str(Path(args.data).resolve()), "--output-dir", str(workdir / "runs"),
               "--cache-dir", str(workdir / "cache")]
    if train is not None:
        command += ["--set", f"data.subset={{train: {train}, val: {val}}}"]
    command += [item for pair in (("--set", s) for s in args.set) for item in pair]
    env = {**os.environ, **ENVIRONMENT_DEFAULTS}
    log = workdir / "log.txt"
    print(f"[{size}] {' '.join(command)}", flush=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak_rss = peak_pss = 0
        try:
            while proc.poll() is None:  # every half second: the run's processes together (trainings in workers too)
                rss, pss = tree_memory(proc.pid)
                peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
                time.sleep(0.5)
        finally:  # Ctrl-C here stops the run too
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode:
        sys.exit(f"[{size}] run failed ({proc.returncode}); see {log}")
    if peak_rss:
        print(f"[{size}] peak memory of the run's processes together, sampled every 0.5 s: {peak_pss / 2**30:.2f} "
              f"GiB (sum of PSS), {peak_rss / 2**30:.2f} GiB (sum of RSS)", flush=True)
    return next((workdir / "runs").iterdir())


def tree_memory(root: int) -> tuple[int, int]:
    """Resident bytes of process ``root`` and all its descendants, read from /proc: the sum of their RSS (pages
    shared by several processes, such as libraries and the memory-mapped dataset, counted in each) and of their PSS
    (each shared page split between its processes: what they hold together). (0, 0) where there is no /proc."""
    parent_of = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:  # after "pid (comm)": state, ppid, ...
            parent_of[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parent_of.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    rss = pss = 0
    for pid in tree:
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
            rss += int(fields["Rss"].split()[0]) * 1024
            pss += int(fields["Pss"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            continue
    return rss, pss


def rows_of(run_dir: Path, size: str, label: str, wall: float, commit: str) -> list[dict]:
    metrics, manifest = read_metrics(run_dir), read_manifest(run_dir)
    epochs: dict[str, list[int]] = {}
    for name, fold in manifest["folds"].items():
        epochs.setdefault(name.split("|")[0], []).append(int(fold["epochs_run"]))
    n_train = sum(metrics["dataset"]["counts"]["train"].values())
    rows = []
    for model in [m for m in MODELS if m in metrics["models"]]:
        result = metrics["models"][model]
        spent = epochs.get(model)
        rows.append({
            "label": label, "size": size, "n_train": n_train, "model": model,
            "test_roc_auc": round(result["test"]["roc_auc"], 4),
            "test_balanced_accuracy": round(result["test"]["balanced_accuracy"], 4),
            "oof_roc_auc": round(result["oof"]["roc_auc"], 4) if "oof" in result else "",  # the student has none
            "epochs_mean": round(sum(spent) / len(spent), 1) if spent else "",
            "epochs_min": min(spent) if spent else "", "epochs_max": max(spent) if spent else "",
            "wall_s": round(wall), "commit": commit,
        })
    return rows


def print_table(path: Path) -> None:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    print("| recipe | train images | model | test ROC AUC | test bal. acc. | OOF ROC AUC | epochs (mean, min-max) | wall |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        spent = f"{r['epochs_mean']} ({r['epochs_min']}-{r['epochs_max']})" if r["epochs_mean"] else "-"
        minutes, seconds = divmod(int(r["wall_s"]), 60)
        print(f"| {r['label']} | {r['n_train']} | {r['model']} | {r['test_roc_auc']} | {r['test_balanced_accuracy']} "
              f"| {r['oof_roc_auc']} | {spent} | {minutes} min {seconds:02d} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="name of the recipe in the table, e.g. before / after")
    parser.add_argument("--sizes", default="546,1500,full", help=f"comma-separated, from {sorted(SIZES)}")
    parser.add_argument("--checkout", default=str(REPO), help="the medstack checkout to run (default: this one)")
    parser.add_argument("--command", default=f"{sys.executable} -m medstack run", help="how that checkout is run")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "pneumoniamnist.npz"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "small_data.csv"))
    parser.add_argument("--keep", metavar="DIR", help="keep each size's runs, cache and log under DIR/SIZE "
                        "(e.g. for benchmarks/tta_ablation.py --cache DIR/546/cache); default: a temporary folder")
    args = parser.parse_args()
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.checkout, capture_output=True,
                            text=True).stdout.strip()
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"medstack-bench-{size}-") as tmp:
            workdir = Path(args.keep) / size if args.keep else Path(tmp)
            if args.keep and workdir.exists():
                sys.exit(f"{workdir} exists; a benchmark run needs a fresh cache (choose another --keep folder)")
            workdir.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            run_dir = run_one(size, args, workdir)
            wall = time.perf_counter() - started
            rows = rows_of(run_dir, size, args.label, wall, commit)
        append_rows(results, FIELDS, rows)
        print(f"[{size}] done in {wall / 60:.1f} min", flush=True)
    print_table(results)


if __name__ == "__main__":
    main()
