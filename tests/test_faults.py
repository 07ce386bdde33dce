"""Faults: a run killed mid-training resumes from the fold cache and never leaves a finished-looking output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]


def _complete_entries(cache: Path) -> set[str]:
    folds = cache / "folds"
    return {p.name for p in folds.iterdir() if not p.name.startswith(".")} if folds.is_dir() else set()


def _run(config: Path, home: Path) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "flows.ensemble", "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the temporary Prefect server is a child: kill the whole group
    )


def test_sigkill_mid_training_then_rerun_resumes_from_cache(tiny_config_dict, tmp_path):
    tiny_config_dict["data"]["subset"] = {"train": 400, "val": 100, "test": 100}
    tiny_config_dict["training"]["epochs"] = 4
    tiny_config_dict["runtime"]["max_workers"] = 1  # one training at a time: a clean point to kill between
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict))
    cache, runs = Path(tiny_config_dict["runtime"]["cache_dir"]), Path(tiny_config_dict["runtime"]["output_dir"])

    proc = _run(config, tmp_path / "home1")
    deadline = time.monotonic() + 300
    while len(_complete_entries(cache)) < 3:
        assert proc.poll() is None, f"run ended before it could be killed:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "no fold finished within 300 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    finished_before = _complete_entries(cache)
    assert 3 <= len(finished_before) < 8
    assert not runs.exists() or not [p for p in runs.iterdir() if not p.name.startswith(".")]  # no run folder

    proc = _run(config, tmp_path / "home2")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    run = next(Path(line) for line in reversed(out.splitlines()) if line.startswith("/") and Path(line).is_dir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["cache_hits"] >= len(finished_before)
    assert manifest["trained"] + manifest["cache_hits"] == 8
    reused = {v["cache_key"] for v in manifest["folds"].values() if v["from_cache"]}
    assert finished_before <= reused
    assert _complete_entries(cache) == {v["cache_key"] for v in manifest["folds"].values()}
    assert set(json.loads((run / "metrics.json").read_text())["models"]) >= {"stacking", "soft_voting"}
