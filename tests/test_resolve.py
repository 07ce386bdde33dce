"""medstack.resolve: the flow's first step, as a plain function (no Prefect, no TensorFlow)."""

import os
import time

import pytest

from medstack.config import ConfigError, RunConfig, stable_hash
from medstack.outputs import RUN_ID, OutputError
from medstack.resolve import resolve_run


def test_a_run_resolves_overrides_folders_and_its_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = RunConfig(runtime={"output_dir": "runs", "cache_dir": "cache"})
    run = resolve_run(config, {"training.epochs": 3, "strategies": {"smote": {"k_neighbors": 2}}})

    assert run.config.training.epochs == 3 and run.config.strategies == {"smote": {"k_neighbors": 2}}
    assert run.output_dir == tmp_path / "runs" and run.output_dir.is_dir()
    assert run.config.runtime.cache_dir == str(tmp_path / "cache") and (tmp_path / "cache").is_dir()
    assert run.config.runtime.output_dir == "runs"  # as given: the run folder's config.yaml shows it so
    # The id names the resolved config (overrides and absolute cache folder included), so two configs differ in it.
    assert RUN_ID.fullmatch(run.run_id)
    assert run.run_id.split("-")[2] == stable_hash(run.config.model_dump(mode="json"))[:6]
    assert resolve_run(config, None).run_id.split("-")[2] != run.run_id.split("-")[2]
    assert config.training.epochs == 30 and config.runtime.cache_dir == "cache"  # the caller's config is unchanged


def test_resolving_sweeps_what_killed_writers_left_in_both_folders(tmp_path):
    other_host = "00000000"  # a writer this host cannot ask about: removed once older than a day
    left = [tmp_path / "runs" / f".20250101-000000-abcdef-0000.{other_host}-1-abcd1234.tmp",
            tmp_path / "cache" / "folds" / f".0123456789abcdef.{other_host}-1-abcd1234.tmp"]
    for path in left:
        path.parent.mkdir(parents=True)
        path.write_text("half written")
        two_days_ago = time.time() - 2 * 86400
        os.utime(path, (two_days_ago, two_days_ago))

    resolve_run(RunConfig(runtime={"output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")}))
    assert not any(path.exists() for path in left)


def test_an_unusable_output_folder_fails_first_and_leaves_no_cache_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    config = RunConfig(runtime={"output_dir": str(tmp_path / "file" / "runs"), "cache_dir": str(tmp_path / "cache")})
    with pytest.raises(OutputError, match="output dir .* cannot be created"):
        resolve_run(config)
    assert not (tmp_path / "cache").exists()


def test_bad_overrides_fail_before_any_folder_is_made(tmp_path):
    config = RunConfig(runtime={"output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")})
    with pytest.raises(ConfigError, match="invalid overrides"):
        resolve_run(config, {"strategies": {"focal": {}}})
    assert list(tmp_path.iterdir()) == []
