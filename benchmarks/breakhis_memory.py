"""Peak memory of the data stages at BreakHis scale: 7,909 RGB 700x460 PNGs loaded at 224x224 on one machine.

    python benchmarks/breakhis_memory.py                          # full size: 7,909 images under /tmp
    python benchmarks/breakhis_memory.py --n 400                  # a quick check on 400 images
    python benchmarks/breakhis_memory.py --dir /data/synth --workers 2

First writes a synthetic BreakHis-like folder to ``--dir`` (default ``$TMPDIR/medstack-breakhis-<n>``; skipped
when a finished one is there): ``benign/`` and ``malignant/`` in BreakHis proportions (2,480 : 5,429), patient
sub-folders, BreakHis file names, 700x460 RGB PNGs of smooth random colour fields with mild grain (so the files
compress like photographs, not like noise or flat colour). Generation runs on ``--workers`` processes and the
folder appears whole or not at all.

Then runs each stage in a fresh Python process and reports its wall time and the process's peak resident set
size *during that stage* (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` just before the stage), next to
the RSS the process already held when the stage began:

* ``load``: ``medstack.data.read_dataset`` of the folder at 224x224 RGB, grouped by BreakHis patient;
* ``split+folds``: ``split_rows`` + ``prepare_folds`` (5 folds) on the loaded dataset;
* ``smote``: the ``smote`` strategy's ``plan`` on fold 0's training part (Keras imported before the stage, as in a
  training process).

The load stage hands what it loaded to the later stages as an ``.npy`` file in a temporary folder, which they
memory-map (as the loader's own array is file-backed), so the PNGs are decoded once; the SMOTE stage splits again
first. Everything before a stage's measurement is outside its wall time. Wall times depend on the machine and its
load; peak memory does not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from medstack.console.quiet import ENVIRONMENT_DEFAULTS

FULL_SIZE = 7909
BENIGN_SHARE = 2480 / 7909
HEIGHT, WIDTH = 460, 700
IMAGE_SIZE = (224, 224)
PATIENTS = {"benign": ("B", ("A", "F", "PT", "TA"), 24), "malignant": ("M", ("DC", "LC", "MC", "PC"), 58)}
MAGNIFICATIONS = (40, 100, 200, 400)
STAGES = ("load", "split+folds", "smote")
_MARKER = "generated.json"


# --------------------------------------------------------------------------------------------- the folder


def image_paths(n: int) -> list[tuple[Path, int]]:
    """Relative path and seed of every image of an ``n``-image folder, BreakHis-style names and proportions."""
    n_benign = max(2, round(n * BENIGN_SHARE))
    out = []
    for class_name, count in (("benign", n_benign), ("malignant", n - n_benign)):
        code, types, n_patients = PATIENTS[class_name]
        n_patients = max(1, min(n_patients, count // 8))
        for i in range(count):
            patient = i * n_patients // count
            pid, kind = f"{14 + patient % 3}-{10000 + patient}", types[patient % len(types)]
            mag = MAGNIFICATIONS[i % len(MAGNIFICATIONS)]
            name = f"SOB_{code}_{kind}-{pid}-{mag}-{i:03d}.png"
            out.append((Path(class_name) / f"SOB_{code}_{kind}_{pid}" / f"{mag}X" / name, len(out)))
    return out


def synthetic_image(seed: int) -> np.ndarray:
    """A 460x700 RGB field: a bicubic-upsampled 12x18 random grid (tissue-like blobs) plus +-4 grain."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 18, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.integers(-4, 5, smooth.shape, dtype=np.int16)
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def _write_image(job: tuple[str, int]) -> int:
    from PIL import Image

    path, seed = Path(job[0]), job[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(synthetic_image(seed)).save(path, format="PNG", compress_level=1)
    return path.stat().st_size


def ensure_folder(root: Path, n: int, workers: int) -> None:
    """Write the ``n``-image folder at ``root`` unless a finished one is there; a different size is an error."""
    marker = root / _MARKER
    if marker.is_file():
        found = json.loads(marker.read_text())["n"]
        if found != n:
            sys.exit(f"{root} holds a generated folder of {found} images, not {n}: pass another --dir")
        print(f"using the existing folder {root} ({n} images)", flush=True)
        return
    if root.exists():
        sys.exit(f"{root} exists but is not a finished generated folder (no {_MARKER}): remove it or pass another --dir")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        start = time.perf_counter()
        jobs = [(str(tmp / rel), seed) for rel, seed in image_paths(n)]
        with ProcessPoolExecutor(workers) as pool:
            sizes = list(pool.map(_write_image, jobs, chunksize=16))
        (tmp / _MARKER).write_text(json.dumps({"n": n, "bytes": sum(sizes)}))
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"generated {n} images ({sum(sizes) / 1e6:.0f} MB of PNG, {sum(sizes) / n / 1e3:.0f} kB each) in "
          f"{time.perf_counter() - start:.0f} s at {root}", flush=True)


# --------------------------------------------------------------------------------------------- the stages


def _rss_mb(field: str) -> float:
    """A ``VmHWM``/``VmRSS``/``RssAnon``/``RssFile`` line of /proc/self/status, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0)


def run_stage(stage: str, root: Path, handoff: Path) -> dict:
    """Do what ``stage`` needs first, then measure the stage alone; runs inside a fresh process."""
    from medstack.config import RunConfig

    cfg = RunConfig(data={"source": "folder", "name": "breakhis-synthetic", "path": str(root),
                          "image_size": list(IMAGE_SIZE), "channels": 3, "group_by": {"kind": "breakhis"}},
                    split={"folds": 5, "seed": 42})
    if stage == "load":
        from medstack.data import read_dataset

        dataset, stats = _measure(lambda: read_dataset(cfg.data))
        _save(dataset, handoff)
        return stats
    from medstack.pipeline import prepare_folds, split_rows

    dataset = _reopen(handoff)

    def split_and_fold():
        return prepare_folds(dataset, split_rows(dataset, cfg), cfg)

    if stage == "split+folds":
        return _measure(split_and_fold)[1]
    import keras  # noqa: F401  a training process has it loaded already; not SMOTE's memory

    from medstack.config import SmoteParams
    from medstack.models.strategies import get_strategy

    fold = split_and_fold().fold_data(0)
    x, y = fold.x_train, fold.y_train
    plan, stats = _measure(lambda: get_strategy("smote").plan(x, y, 2, SmoteParams(k_neighbors=5), 10, seed=42))
    stats["rows"] = f"{len(x)} -> {len(plan.x)}"
    return stats


def _save(dataset, folder: Path) -> None:
    """What the load stage built, for the later stages (so they need not decode 7,909 PNGs again)."""
    np.save(folder / "images.npy", dataset.images)
    (folder / "meta.json").write_text(json.dumps({
        "name": dataset.name, "labels": dataset.labels.tolist(), "class_names": dataset.class_names,
        "sources": dataset.sources, "groups": dataset.groups, "grouped_by": dataset.grouped_by}))


def _reopen(folder: Path):
    """The loaded dataset again, its images memory-mapped from the hand-off file as the loader's are from its own."""
    from medstack.data import Dataset

    meta = json.loads((folder / "meta.json").read_text())
    return Dataset(name=meta["name"], images=np.load(folder / "images.npy", mmap_mode="r"),
                   labels=np.asarray(meta["labels"], dtype=np.int64), class_names=tuple(meta["class_names"]),
                   official_split=None, sources=tuple(meta["sources"]), groups=tuple(meta["groups"]),
                   grouped_by=meta["grouped_by"])


def _measure(work):
    before = _rss_mb("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    result = work()
    wall = time.perf_counter() - start
    stats = {"wall_s": wall, "rss_before_mb": before, "peak_rss_mb": _rss_mb("VmHWM"),
             "anon_after_mb": _rss_mb("RssAnon"), "file_after_mb": _rss_mb("RssFile"),
             "maxrss_process_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return result, stats


def measure_in_subprocess(stage: str, root: Path, handoff: Path) -> dict:
    env = {**os.environ, **ENVIRONMENT_DEFAULTS}
    done = subprocess.run([sys.executable, __file__, "--stage", stage, "--dir", str(root), "--handoff", str(handoff)],
                          env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"stage {stage} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=FULL_SIZE, help=f"images in the folder (default {FULL_SIZE})")
    parser.add_argument("--dir", type=Path, default=None, help="folder to generate/use (default under $TMPDIR)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes that write the PNGs")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # internal: one stage in this process
    parser.add_argument("--handoff", type=Path, help=argparse.SUPPRESS)  # internal: the loaded dataset, for stages
    args = parser.parse_args()
    if args.n < 40:
        parser.error(f"--n must be at least 40 (5 folds of both classes), got {args.n}")
    root = args.dir or Path(tempfile.gettempdir()) / f"medstack-breakhis-{args.n}"
    if args.stage:
        print(json.dumps(run_stage(args.stage, root, args.handoff)))
        return
    ensure_folder(root, args.n, max(1, args.workers))
    copy_mb = args.n * IMAGE_SIZE[0] * IMAGE_SIZE[1] * 3 / 2**20
    rows = []
    with tempfile.TemporaryDirectory(prefix="medstack-breakhis-handoff-") as handoff:
        for stage in STAGES:
            stats = measure_in_subprocess(stage, root, Path(handoff))
            rows.append((stage, stats))
            print(f"{stage}: {json.dumps(stats)}", flush=True)
    print(f"\n{args.n} images at {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}x3: one uint8 copy is {copy_mb:.0f} MB; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| stage | wall s | RSS before MB | peak RSS MB | anon after MB | file-backed after MB | rows |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for stage, s in rows:
        print(f"| {stage} | {s['wall_s']:.1f} | {s['rss_before_mb']:.0f} | {s['peak_rss_mb']:.0f} | "
              f"{s['anon_after_mb']:.0f} | {s['file_after_mb']:.0f} | {s.get('rows', '')} |")


if __name__ == "__main__":
    main()
