"""The run folder's edges: nothing written outside the output folder, temporaries of killed runs swept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medstack import outputs
from medstack.outputs import OutputError, check_cache_dir, check_output_dir, write_run
from medstack.storage import _writer_tag, atomic_directory


def _write_run(output_dir: Path, run_id: str) -> Path:
    # The path checks come before anything is computed or written, so no real run is needed to reach them.
    return write_run(output_dir, run_id, None)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("run_id", ["../evil", "../../evil", "a/b", "..", ".hidden", "", "a\\b"])
def test_run_ids_that_are_not_plain_folder_names_are_refused(tmp_path, run_id):
    with pytest.raises(OutputError, match="not a plain folder name"):
        _write_run(tmp_path / "runs", run_id)
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("target", ["existing", "dangling"])
def test_a_planted_symlink_at_the_run_folder_is_not_followed(tmp_path, target):
    outside = tmp_path / "outside"
    if target == "existing":
        outside.mkdir()
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "20250101-000000-abcdef-0000").symlink_to(outside)
    with pytest.raises(OutputError, match="already exists as a symlink"):
        _write_run(runs, "20250101-000000-abcdef-0000")
    assert outside.is_dir() == (target == "existing") and (target == "dangling" or list(outside.iterdir()) == [])
    assert [p.name for p in runs.iterdir()] == ["20250101-000000-abcdef-0000"]


def test_a_run_folder_holding_a_symlink_is_never_renamed_into_place(tmp_path):
    (tmp_path / "secret").write_text("outside")
    with pytest.raises(OutputError, match=r"would hold a symlink models/x.keras -> .*secret"):
        with atomic_directory(tmp_path / "runs" / "r") as tmp:
            (tmp / "models").mkdir()
            (tmp / "models" / "x.keras").symlink_to(tmp_path / "secret")
            outputs._check_no_symlinks(tmp)
    assert list((tmp_path / "runs").iterdir()) == []


def test_output_and_cache_checks_sweep_killed_runs_temporaries_but_not_live_ones(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    host = _writer_tag().split("-")[0]
    runs, folds = tmp_path / "runs", tmp_path / "cache" / "folds"
    planted = {
        runs / f".20250101-000000-abcdef-0000.{host}-{dead.pid}-abcd1234.tmp": False,
        runs / f".20250101-000000-abcdef-0001.{_writer_tag()}-abcd1234.tmp": True,
        folds / f".0123456789abcdef.{host}-{dead.pid}-abcd1234.tmp": False,
        folds / f".0123456789abcdef.{_writer_tag()}-abcd1234.tmp": True,
        runs / "20250101-000000-abcdef-0002": True,
    }
    for path in planted:
        (path / "models").mkdir(parents=True)
    assert check_output_dir(runs) == runs.resolve()
    assert check_cache_dir(tmp_path / "cache") == (tmp_path / "cache").resolve()
    assert {path: path.exists() for path in planted} == planted


def test_an_unusable_cache_dir_fails_before_any_training(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cache dir .* cannot be created"):
        check_cache_dir(tmp_path / "file" / "cache")
    if os.geteuid() != 0:  # root may write anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(OutputError, match="cache dir .* is not writable"):
            check_cache_dir(tmp_path / "ro")
