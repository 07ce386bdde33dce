"""Faults: a run killed mid-training resumes from the fold cache, ends as a clean run would, and never leaves a
finished-looking output; runs sharing an output folder and a cache at the same time do not disturb each other."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medstack.storage import _writer_tag

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]


def _complete_entries(cache: Path) -> set[str]:
    folds = cache / "folds"
    return {p.name for p in folds.iterdir() if not p.name.startswith(".")} if folds.is_dir() else set()


def _run(config: Path, home: Path, api: dict[str, str]) -> subprocess.Popen:
    """``medstack run`` reporting to this worker's Prefect test server (``api``), not a temporary server each."""
    env = {**os.environ, "PREFECT_HOME": str(home), "PYTHONUNBUFFERED": "1", **api}
    return subprocess.Popen(
        [sys.executable, "-m", "medstack", "run", "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # kill the whole group: the run and any process it started
    )


def _run_dir(out: str) -> Path:
    """The run folder from `medstack run`'s closing line (``run folder: /path``)."""
    paths = (line.removeprefix("run folder: ") for line in reversed(out.splitlines()))
    return next(Path(p) for p in paths if p.startswith("/") and Path(p).is_dir())


def _plant_temporary(folder: Path, name: str, pid: int) -> Path:
    """What a writer killed inside atomic_directory leaves: a half-filled temporary named for its pid."""
    tmp = folder / f".{name}.{_writer_tag().split('-')[0]}-{pid}-deadbeef.tmp"
    tmp.mkdir(parents=True)
    (tmp / "half.json").write_text('{"half":')
    return tmp


def test_sigkill_mid_training_then_rerun_resumes_from_cache_and_equals_a_clean_run(tiny_reference, tmp_path,
                                                                                    prefect_api_env):
    """2 strategies x 2 folds, one training at a time: kill the run's process group once a fold is in the cache,
    re-run it (through the flow in this process), and compare with a clean run of the same config (conftest's tiny
    reference: a test process, its own cache and output folder)."""
    from medstack.config import load_config
    from medstack.flows.ensemble import ensemble_flow

    tree = yaml.safe_load((tiny_reference / "config.yaml").read_text())
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    tree["runtime"].update(cache_dir=str(cache), output_dir=str(runs), max_workers=1)  # a clean point to kill between
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tree))

    proc = _run(config, tmp_path / "home1", prefect_api_env)
    deadline = time.monotonic() + 300
    while len(_complete_entries(cache)) < 1:
        assert proc.poll() is None, f"run ended before it could be killed:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "no fold finished within 300 s"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    finished_before = _complete_entries(cache)
    assert 1 <= len(finished_before) < 4
    assert not runs.exists() or not [p for p in runs.iterdir() if not p.name.startswith(".")]  # no run folder
    # A kill inside a write leaves temporaries (timing decides whether this one did): plant what it would leave.
    leftovers = [_plant_temporary(cache / "folds", "0123456789abcdef", proc.pid), _plant_temporary(runs, "20250101-000000-abcdef-0000", proc.pid)]

    # The re-run in this process (the kill needed a process of its own; resuming does not).
    run = Path(ensemble_flow(config=load_config(config)))
    clean_run = tiny_reference
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["cache_hits"] >= len(finished_before)
    assert manifest["trained"] + manifest["cache_hits"] == 4
    reused = {v["cache_key"] for v in manifest["folds"].values() if v["from_cache"]}
    assert finished_before <= reused
    assert _complete_entries(cache) == {v["cache_key"] for v in manifest["folds"].values()}
    assert set(json.loads((run / "metrics.json").read_text())["models"]) >= {"stacking", "soft_voting"}
    assert not any(p.exists() for p in leftovers)  # the re-run swept what the killed run left
    assert [p.name for p in runs.iterdir()] == [run.name]

    # Equal to the clean run, bitwise: training is deterministic on CPU for a given seed (seeded batch order,
    # seeded layers and SMOTE; measured equal across processes and parallel threads). On a GPU this would need
    # a tolerance: cuDNN kernels are not bitwise reproducible.
    clean_manifest = json.loads((clean_run / "manifest.json").read_text())
    assert clean_manifest["trained"] == 4
    assert manifest["determinism"] == clean_manifest["determinism"]
    assert json.loads((run / "metrics.json").read_text()) == json.loads((clean_run / "metrics.json").read_text())
    for name in ("oof_predictions.csv", "test_predictions.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(run / name), pd.read_csv(clean_run / name), check_exact=True)


def test_parallel_runs_share_one_output_folder_and_one_cache_without_clobbering(tiny_config_dict, tmp_path,
                                                                                prefect_api_env):
    """Config A and config B at once on one output folder and one cache.

    B trains A's strategies and one more (and reports with another bootstrap), so the two runs race for every one of
    A's entries. Whoever renames first wins; the other uses its entry, and both end with the same predictions from
    the shared models.
    """
    from medstack.config import load_config
    from medstack.pipeline import FoldCache

    tiny_config_dict["data"]["subset"] = {"train": 120, "val": 40, "test": 40}
    tiny_config_dict["training"]["epochs"] = 1
    tiny_config_dict["ensemble"]["inner_folds"] = 2
    configs = {}
    for name, strategies, bootstrap in (("a", {"class_weight": {}}, 20), ("b", {"class_weight": {}, "smote": {}}, 30)):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump({**tiny_config_dict, "name": name, "strategies": strategies, "report": {"bootstrap": bootstrap}}))
    cache, runs = Path(tiny_config_dict["runtime"]["cache_dir"]), Path(tiny_config_dict["runtime"]["output_dir"])

    procs = {tag: _run(configs[tag], tmp_path / f"home-{tag}", prefect_api_env) for tag in ("a", "b")}
    outs = {tag: proc.communicate(timeout=600)[0] for tag, proc in procs.items()}
    for tag, proc in procs.items():
        assert proc.returncode == 0, f"{tag}:\n{outs[tag][-3000:]}"
    dirs = {tag: _run_dir(out) for tag, out in outs.items()}

    assert sorted(p.name for p in runs.iterdir()) == sorted(d.name for d in dirs.values())  # 2 folders, no temporaries
    manifests = {tag: json.loads((d / "manifest.json").read_text()) for tag, d in dirs.items()}
    for tag, run in dirs.items():
        own = load_config(configs[tag])
        assert load_config(run / "config.yaml") == own and manifests[tag]["run_id"] == run.name
        assert {k.split("|")[0] for k in manifests[tag]["folds"]} == set(own.strategies)
        assert set(json.loads((run / "metrics.json").read_text())["models"]) == {*own.strategies, "soft_voting", "stacking"}
        for key, fold in manifests[tag]["folds"].items():  # each run's models are the cache entries its predictions came from
            strategy, k = key.split("|")
            copied = run / "models" / strategy / f"{k}.keras"
            assert copied.read_bytes() == (FoldCache(cache).entry(fold["cache_key"]) / "model.keras").read_bytes()

    keys = {tag: {v["cache_key"] for v in m["folds"].values()} for tag, m in manifests.items()}
    assert len(keys["a"]) == 2 and keys["a"] < keys["b"] and len(keys["b"]) == 4  # every entry of A raced for
    assert sorted(p.name for p in (cache / "folds").iterdir()) == sorted(keys["b"])  # no temporaries
    assert all(FoldCache(cache).load(key) is not None for key in keys["b"])  # every entry whole
    for name in ("oof_predictions.csv", "test_predictions.csv"):  # A's models gave both runs the same predictions
        a, b = (pd.read_csv(dirs[t] / name) for t in ("a", "b"))
        shared = [c for c in a.columns if c.split(":")[0] in ("row", "label", "fold", "class_weight")]
        assert len(shared) > 2
        pd.testing.assert_frame_equal(a[shared], b[shared], check_exact=True)
