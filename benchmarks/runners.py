"""One config under each task runner: wall time, the flow process's peak memory, and what a task submission
serialises.

Runs ``medstack run`` once per runner (threads, processes, and dask with a temporary local cluster), each with a
fresh fold cache so every fold trains, and reads the run's manifest: ``wall_seconds`` and ``flow_peak_rss_mb``
(the flow process alone: ``getrusage(RUSAGE_SELF)``, trainings in worker processes excluded). ``--workers 1,2``
repeats the processes and dask runs at each width, to show that the flow's memory does not grow with the number
of workers. Then it loads and prepares the same dataset in this process and prints the bytes that the training
task's parameters pickle to (cloudpickle, what the processes and Dask runners send) with the prepared dataset
in memory (before issue 15) and stored by reference (now).

    python benchmarks/runners.py                                   # configs/smoke.yaml, 2 workers
    python benchmarks/runners.py --config configs/pneumoniamnist.yaml --set 'data.subset={train: 546, val: 78}'

Run it alone on the machine: the runners share its cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medstack.console.quiet import ENVIRONMENT_DEFAULTS
from medstack.run_folder import read_manifest, read_metrics

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "pneumoniamnist.npz"


def run(config: Path, sets: list[str], runner: str, workers: int, root: Path) -> dict:
    tag = f"{runner}-{workers}"
    extra = [f"runtime.task_runner={runner}", f"runtime.max_workers={workers}", f"runtime.dask.n_workers={workers}"]
    args = [sys.executable, "-m", "medstack", "run", "--config", str(config), "--data", str(DATA),
            "--output-dir", str(root / tag / "runs"), "--cache-dir", str(root / tag / "cache")]
    for value in [*sets, *extra]:
        args += ["--set", value]
    env = {**os.environ, **ENVIRONMENT_DEFAULTS, "PREFECT_HOME": str(root / tag / "home")}
    (root / tag / "home").mkdir(parents=True)
    started = time.perf_counter()
    done = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{tag} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    run_dir = Path(done.stdout.strip().splitlines()[-1].removeprefix("run folder: "))
    manifest, metrics = read_manifest(run_dir), read_metrics(run_dir)
    pids = {f["worker"]["pid"] for f in manifest["folds"].values()}
    return {"runner": runner, "workers": workers, "wall_s": manifest["wall_seconds"],
            "process_wall_s": round(time.perf_counter() - started, 1), "flow_peak_rss_mb": manifest["flow_peak_rss_mb"],
            "trained": manifest["trained"], "training_processes": len(pids),
            "stacking_test_auc": metrics["models"]["stacking"]["test"].get("roc_auc")}


def submission_bytes(config: Path, sets: list[str], root: Path) -> tuple[int, int, int]:
    """cloudpickle size of {"prepared", "cfg", "strategy", "fold"}: in memory, stored by reference; image bytes."""
    import cloudpickle

    from medstack.cli import QUIET, load_run_config
    from medstack.data import read_dataset
    from medstack.pipeline import prepare_folds, split_rows, store_prepared

    cfg = load_run_config(argparse.Namespace(config=config, set=sets, data=str(DATA), output_dir=None, cache_dir=None,
                                             verbosity=QUIET))
    dataset = read_dataset(cfg.data)
    prepared = prepare_folds(dataset, split_rows(dataset, cfg), cfg)
    stored = store_prepared(prepared, root / "store")
    sizes = [len(cloudpickle.dumps({"prepared": p, "cfg": cfg, "strategy": "smote", "fold": 0})) for p in (prepared, stored)]
    return sizes[0], sizes[1], int(prepared.images.nbytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "smoke.yaml")
    parser.add_argument("--set", action="append", default=[], help="config override, as for medstack run")
    parser.add_argument("--workers", default="2", help="comma-separated widths for processes and dask (threads: the first)")
    parser.add_argument("--runners", default="threads,processes,dask")
    args = parser.parse_args()
    widths = [int(w) for w in args.workers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="medstack-runners-") as tmp:
        root = Path(tmp)
        before, after, pixels = submission_bytes(args.config.resolve(), args.set, root)
        print(f"training task parameters, pickled: {before:,} bytes with the dataset in memory ({pixels:,} bytes of "
              f"images), {after:,} bytes stored by reference", flush=True)
        for runner in args.runners.split(","):
            for width in widths[:1] if runner == "threads" else widths:
                rows.append(run(args.config.resolve(), args.set, runner, width, root))
                print(json.dumps(rows[-1]), flush=True)
    print("\n| runner | workers | wall | flow peak RSS | training processes | stacking test ROC AUC |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['runner']} | {r['workers']} | {r['wall_s']:.0f} s | {r['flow_peak_rss_mb']:.0f} MB | "
              f"{r['training_processes']} | {r['stacking_test_auc']} |")


if __name__ == "__main__":
    main()
