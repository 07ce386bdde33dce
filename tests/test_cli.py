"""The ``medstack`` console script as a person meets it, run as a subprocess.

One row of docs/BAD_INPUTS.md per error kind (data, split, output, SMOTE's data error, config) goes through
``medstack run`` as a subprocess: exit code 2, the culprit named on stderr, no traceback anywhere, no run folder and
no cache entry left (tests/test_bad_inputs.py runs every row through the same CLI code in-process). Then ``--data``
on a folder with an npz config, a default run's output (no TensorFlow or Prefect start-up lines), ``-q``, ``runs``
and ``compare``. The error rows share this worker's Prefect test server (PREFECT_API_URL), so each run does not
start its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_bad_inputs import (CONFIG_CASES, DATA_CASES, KIND, _assert_nothing_written, _folder, _tiny, assert_reads_well,
                             run_cli)

from medstack.console.quiet import TF_STARTUP_NOISE

pytestmark = pytest.mark.e2e
MEDSTACK = shutil.which("medstack", path=str(Path(sys.executable).parent)) or "medstack"
PREFECT_CHATTER = ("Starting temporary server", "Stopping temporary server", "Beginning flow run", "Finished in state")
SMOTE_ROW = "smote-minority-of-one"


def medstack(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "MEDSTACK_DEBUG"}
    full_env.update(env or {})
    return subprocess.run([MEDSTACK, *map(str, args)], capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=600)


def _write_config(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _assert_reads_well(done: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in done.stdout, done.stdout
    assert_reads_well(done.stderr)


# One row of each error kind: what the CLI maps an error type to is proven once end to end; every row goes through
# the same mapping in-process in tests/test_bad_inputs.py.
ONE_ROW_PER_KIND = ("folder-missing", "minority-too-small-to-split", "output-dir-not-writable", SMOTE_ROW)
ONE_ROW_EACH = [c for c in DATA_CASES if c[0] in ONE_ROW_PER_KIND]


@pytest.mark.slow
@pytest.mark.parametrize("case_id, build, error, pattern", ONE_ROW_EACH, ids=[c[0] for c in ONE_ROW_EACH])
def test_a_bad_data_row_of_each_kind_reads_as_a_few_lines_with_exit_2(prefect_api_env, tmp_path, case_id, build,
                                                                       error, pattern):
    tree = _tiny(tmp_path, build(tmp_path))
    done = medstack("run", "--config", _write_config(tmp_path, tree), env=prefect_api_env)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert re.search(pattern, done.stderr), done.stderr
    assert f"medstack: {KIND[error]}: " in done.stderr
    _assert_reads_well(done)
    _assert_nothing_written(tree)


@pytest.mark.parametrize("case_id, overrides, pattern", CONFIG_CASES[:1], ids=[CONFIG_CASES[0][0]])
def test_a_bad_config_row_reads_as_a_few_lines_with_exit_2(tmp_path, case_id, overrides, pattern):
    tree = _tiny(tmp_path, overrides)
    config = _write_config(tmp_path, tree)
    for command in ("run", "check-config"):
        done = medstack(command, "--config", config)
        assert done.returncode == 2, done.stderr
        assert re.search(pattern, done.stderr) and f"medstack: config error: {config}: invalid config:" in done.stderr
        _assert_reads_well(done)
    _assert_nothing_written(tree)


BAD_PATHS_AND_FLAGS = [
    (["--config", "nope.yaml"], "medstack: config error: config file not found: nope.yaml"),
    (["--data", "missing/"], "medstack: config error: --data missing: no such file or folder"),
    (["--data", "notes.txt"], "--data notes.txt: a .txt file; medstack reads an .npz file"),
    (["--set", "training.epochs"], "--set expects KEY=VALUE, got 'training.epochs'"),
]


def _paths_case(tmp_path: Path, args: list[str]) -> list[str]:
    (tmp_path / "notes.txt").write_text("x")
    shutil.copy(Path(__file__).parents[1] / "configs" / "smoke.yaml", tmp_path / "smoke.yaml")
    return ["run", *(args if args[0] == "--config" else ["--config", "smoke.yaml", *args])]


def test_a_bad_path_is_named_by_the_console_script(tmp_path):
    args, message = BAD_PATHS_AND_FLAGS[1]
    done = medstack(*_paths_case(tmp_path, args), cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    _assert_reads_well(done)


@pytest.mark.parametrize("args, message", BAD_PATHS_AND_FLAGS)
def test_bad_paths_and_flags_are_named(tmp_path, capsys, monkeypatch, args, message):
    argv = _paths_case(tmp_path, args)
    monkeypatch.chdir(tmp_path)
    code, _, err, _ = run_cli(argv, capsys, monkeypatch)
    assert code == 2 and message in err, err
    assert_reads_well(err)


def test_debug_shows_the_traceback(tmp_path):
    done = medstack("check-config", "--config", tmp_path / "nope.yaml", "--debug")
    assert done.returncode == 2 and "Traceback" in done.stderr and "config file not found" in done.stderr
    done = medstack("check-config", "--config", tmp_path / "nope.yaml", env={"MEDSTACK_DEBUG": "1"})
    assert done.returncode == 2 and "Traceback" in done.stderr


def test_data_folder_with_an_npz_config_asks_for_exactly_the_missing_key(tmp_path):
    folder = _folder(tmp_path / "images", counts=(12, 12))
    config = Path(__file__).parents[1] / "configs" / "smoke.yaml"
    done = medstack("check-config", "--config", config, "--data", folder)
    assert done.returncode == 2
    assert "is an image folder" in done.stderr and "--set data.image_size=" in done.stderr
    _assert_reads_well(done)
    done = medstack("check-config", "--config", config, "--data", folder, "--set", "data.image_size=[12,12]")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"medstack: --data {folder} is an image folder: using data.source folder (the config says npz)"]
    data = yaml.safe_load(done.stdout)["data"]
    assert data["source"] == "folder" and data["path"] == str(folder) and data["image_size"] == [12, 12]
    # class names written for the npz do not fit the folder: dropped, and said so
    done = medstack("check-config", "--config", config, "--data", folder, "--set", "data.image_size=[12,12]",
                    "--set", "data.class_names=[normal,pneumonia]")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[1] == (
        "medstack: data.class_names ['normal', 'pneumonia'] describe the config's dataset, not this folder: "
        "classes come from its sub-folders ['benign', 'malignant']")
    assert yaml.safe_load(done.stdout)["data"]["class_names"] is None


@pytest.fixture(scope="module")
def folder_runs(tmp_path_factory, prefect_api_env, prefect_home_with_database):
    """One default run of an npz config on an image folder (its own temporary Prefect server, as a user gets: no
    PREFECT_API_URL, a Prefect home whose database a server created before; the default runner, trainings in two
    worker processes that report to that server), then the same with -q (folds from the cache)."""
    tmp = tmp_path_factory.mktemp("cli")
    home = {"PREFECT_HOME": str(prefect_home_with_database(tmp / "prefect-home"))}
    folder = _folder(tmp / "images", counts=(16, 16))
    tree = _tiny(tmp, {"data": {"source": "npz", "name": "pneumoniamnist", "path": "x.npz", "image_size": [12, 12],
                                "channels": 1}, "runtime": {"max_workers": 2, "task_runner": "processes"}})  # a user's default
    config = _write_config(tmp, tree)
    first = medstack("run", "--config", config, "--data", folder, "--set", "split.fractions=[0.5,0.25,0.25]",
                     env=home)
    second = medstack("run", "-q", "--config", config, "--data", folder, "--set", "split.fractions=[0.5,0.25,0.25]",
                      env=prefect_api_env)  # -q on this worker's Prefect server: no second temporary server
    return tmp, first, second


@pytest.mark.slow
def test_data_folder_with_an_npz_config_runs_and_says_so(folder_runs):
    tmp, first, _ = folder_runs
    assert first.returncode == 0, first.stderr
    assert f"medstack: --data {tmp / 'images'} is an image folder: using data.source folder (the config says npz)" \
        in first.stderr
    run = Path(first.stdout.splitlines()[-1].removeprefix("run folder: "))
    assert run.parent == tmp / "runs" and (run / "metrics.json").is_file()
    assert json.loads((run / "metrics.json").read_text())["dataset"]["classes"] == ["benign", "malignant"]


@pytest.mark.slow
def test_default_run_output_has_no_start_up_noise(folder_runs):
    _, first, _ = folder_runs
    output = first.stdout + first.stderr
    for noise in TF_STARTUP_NOISE + PREFECT_CHATTER + ("Traceback",):
        assert noise not in output, (noise, output)
    # Not a terminal: plain lines, one per fold, then the leaderboard and the run folder.
    assert "training 2 models (2 at a time, one process each)" in first.stderr
    assert sum(line.startswith("[") and "class_weight fold" in line for line in first.stderr.splitlines()) == 2
    assert first.stdout.splitlines()[0] == "test ROC AUC (95% CI):"
    run = Path(first.stdout.splitlines()[-1].removeprefix("run folder: "))
    recommended = json.loads((run / "metrics.json").read_text())["recommended"]  # chosen on OOF, with its reason
    assert f"recommended: {recommended['model']} ({recommended['reason']})" in first.stdout


@pytest.mark.slow
def test_quiet_prints_only_the_run_folder(folder_runs):
    tmp, _, second = folder_runs
    assert second.returncode == 0, second.stderr
    assert second.stderr == ""
    [line] = second.stdout.splitlines()
    assert Path(line).parent == tmp / "runs" and (Path(line) / "report.md").is_file()


@pytest.mark.slow
def test_predict_output_has_no_start_up_noise(folder_runs):
    tmp, first, _ = folder_runs
    run = Path(first.stdout.splitlines()[-1].removeprefix("run folder: "))
    done = medstack("predict", "--model", run, "--input", tmp / "images", "--output", tmp / "scored.csv")
    assert done.returncode == 0, done.stderr
    for noise in TF_STARTUP_NOISE + ("Traceback",):
        assert noise not in done.stdout + done.stderr, (noise, done.stderr)
    lines = done.stderr.splitlines()
    assert lines[0].startswith(f"model: {run} -> run {run.name}") and any(
        line.startswith("scored 32 image(s)") for line in lines), done.stderr


@pytest.mark.slow
def test_runs_lists_and_compare_diffs_past_runs(folder_runs):
    tmp, first, second = folder_runs
    run_a = Path(first.stdout.splitlines()[-1].removeprefix("run folder: "))
    run_b = Path(second.stdout.strip())
    listing = medstack("runs", "--output-dir", tmp / "runs")
    assert listing.returncode == 0, listing.stderr
    rows = [line for line in listing.stdout.splitlines() if re.match(r"\d{8}-\d{6}-", line)]
    assert [row.split()[0] for row in rows] == sorted([run_a.name, run_b.name])
    fingerprint = json.loads((run_a / "manifest.json").read_text())["data_fingerprint"][:12]
    assert all(row.split()[1] == "medstack-run" and fingerprint in row for row in rows)
    recommended = json.loads((run_a / "metrics.json").read_text())["recommended"]["model"]
    assert f"{recommended} (recommended)" in rows[[r.split()[0] for r in rows].index(run_a.name)]
    compared = medstack("compare", run_a.name, run_b.name, "--output-dir", tmp / "runs")
    assert compared.returncode == 0, compared.stderr
    auc_a = json.loads((run_a / "metrics.json").read_text())["models"]["stacking"]["test"]["roc_auc"]
    auc_b = json.loads((run_b / "metrics.json").read_text())["models"]["stacking"]["test"]["roc_auc"]
    [row] = [line.split() for line in compared.stdout.splitlines() if line.split()[:2] == ["stacking", "roc_auc"]]
    # The second run reused every fold: the same test probabilities, so the paired interval is exactly zero.
    assert row[2:] == [f"{auc_a:.3f}", f"{auc_b:.3f}", f"{auc_b - auc_a:+.3f}", "+0.000", "to", "+0.000"]
    assert "paired: each ROC AUC difference bootstrapped over the same resampled test images" in compared.stdout
    missing = medstack("compare", run_a.name, "nope", "--output-dir", tmp / "runs")
    assert missing.returncode == 2 and "run 'nope' not found" in missing.stderr
