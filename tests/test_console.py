"""The terminal helpers as plain functions: error verdicts, retry lines, the progress state, --data fitting."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import yaml

from medstack.config import ConfigError, load_config
from medstack.console import errors, progress
from medstack.console.datapath import fit_data_path
from medstack.console.quiet import TerminalLines, filtered_stderr, logger_level
from medstack.data import DataError
from medstack.data.download import DownloadError
from medstack.models.smote import SmoteError
from medstack.progress import EpochEnded, FoldFinished, FoldsPlanned, FoldStarted
from medstack.splits import SplitError


@pytest.mark.parametrize(
    "exc, code, kind",
    [
        (DataError("x.npz: missing keys"), 2, "data error"),
        (SplitError("cannot stratify"), 2, "split error"),
        (ConfigError("config file not found: c.yaml"), 2, "config error"),
        (SmoteError("SMOTE needs at least 2 samples per class, class counts are [5, 1]"), 2, "data error"),
        (DownloadError("download of https://x failed: timed out"), 1, "download failed"),
        (KeyError("oops"), 1, "run failed (KeyError)"),
    ],
)
def test_every_error_gets_an_exit_code_and_a_kind(exc, code, kind):
    stream = io.StringIO()
    assert errors.report(exc, stream=stream) == code
    first = stream.getvalue().splitlines()[0]
    assert first.startswith(f"medstack: {kind}: ") and "Traceback" not in stream.getvalue()


def test_a_validation_error_reads_as_one_line_per_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"training": {"epochs": "ten"}, "trainig": {}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    stream = io.StringIO()
    assert errors.report(info.value, stream=stream) == 2
    lines = stream.getvalue().splitlines()
    assert lines[0] == f"medstack: config error: {path}: invalid config:"
    assert "  training.epochs: Input should be a valid integer, unable to parse string as an integer (got 'ten')" in lines
    assert "  trainig: Extra inputs are not permitted" in lines


def test_a_prefect_retry_record_becomes_one_line():
    record = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1,
                               "Task run failed with %s: %r - Retry %s/%s will start %s",
                               ("exception", OSError("download of https://x failed: timed out"), 1, 2,
                                "5 second(s) from now"), None)
    record.task_run_name = "load_dataset-1d9"
    assert TerminalLines.line(record) == ("medstack: load_dataset failed (download of https://x failed: timed out), "
                                          "retrying 1/2 in 5 s")
    record.task_run_name = "train[smote|fold-1]"
    assert TerminalLines.line(record).startswith("medstack: train[smote|fold-1] failed (")
    quiet = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1, "Finished in state %s", ("x",), None)
    assert TerminalLines.line(quiet) is None


def test_progress_counts_folds_and_estimates_the_time_left():
    state = progress.ProgressState(workers=2, started=0.0)
    shown = progress.RunProgress(2, live=False, stream=io.StringIO())
    shown.state = state
    for event in (FoldsPlanned(4), FoldStarted("ldam", 0), FoldStarted("ldam", 1)):
        shown(event)
    shown(EpochEnded("ldam", 1, 2, 4, {"loss": 0.7}))
    assert progress.fold_lines(state, now=state.running[("ldam", 1)].started + 5)[1].startswith(
        "  training ldam fold 2, epoch 2/4")
    shown(FoldFinished("ldam", 0, from_cache=False, seconds=10.0, done=1, total=4))
    shown(FoldFinished("ldam", 1, from_cache=True, seconds=None, done=2, total=4))
    assert shown.stream.getvalue().splitlines() == [  # plain lines: the plan and every finished fold
        "training 4 models (2 at a time)", "[1/4] ldam fold 1 trained in 10.0 s",
        "[2/4] ldam fold 2 from the fold cache"]
    assert (state.trained, state.cached, state.done) == (1, 1, 2)
    # Two folds left, none running, 10 s per trained fold, two workers: 10 s.
    assert state.seconds_left(now=state.started + 20) == pytest.approx(10.0)
    assert "folds 2/4 (1 trained, 1 cached)" in progress.summary_line(state, now=state.started + 20)


def test_an_epoch_of_a_fold_not_in_training_changes_nothing():
    shown = progress.RunProgress(1, live=False, stream=io.StringIO())
    shown(FoldsPlanned(2))
    shown(FoldStarted("smote", 0))
    shown(EpochEnded("smote", 1, 1, 3))
    assert shown.state.running[("smote", 0)].epoch is None and ("smote", 1) not in shown.state.running


def test_a_logger_level_is_set_for_a_block_only():
    logger = logging.getLogger("medstack-test-level")
    logger.setLevel(logging.INFO)
    with pytest.raises(KeyError):
        with logger_level("medstack-test-level", logging.ERROR):
            assert logger.level == logging.ERROR
            raise KeyError("a failed command")
    assert logger.level == logging.INFO


def test_filtered_stderr_drops_tensorflow_start_up_lines_and_keeps_the_rest(capfd):
    import os

    with filtered_stderr():
        os.write(2, b"I0000 00:00:1 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n")
        os.write(2, b"a line that matters\n")
    assert capfd.readouterr().err == "a line that matters\n"


@pytest.mark.parametrize("source, data, expect", [("npz", "d.npz", {}), ("folder", "imgs", {})])
def test_data_flag_keeps_a_matching_source(tmp_path, source, data, expect):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "d.npz").write_bytes(b"")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": source, "image_size": [8, 8], "path": "x"}}))
    overrides, notes = fit_data_path(config, str(tmp_path / data), {})
    assert overrides == {"data.path": str(tmp_path / data)} and notes == []


def test_data_flag_refuses_a_grouping_the_new_source_cannot_give(tmp_path):
    (tmp_path / "imgs").mkdir()
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": "npz", "image_size": [8, 8],
                                               "group_by": {"kind": "npz_key", "key": "groups"}}}))
    with pytest.raises(ConfigError, match=r"data.group_by kind 'npz_key' does not work with it; set data.group_by "
                                          r"to one of breakhis, filename_regex, csv"):
        fit_data_path(config, str(tmp_path / "imgs"), {})
    overrides, notes = fit_data_path(config, str(tmp_path / "imgs"), {"data.group_by": "none"})
    assert overrides["data.source"] == "folder" and len(notes) == 1
    assert Path(overrides["data.path"]).name == "imgs"


def test_the_plan_line_says_where_the_trainings_run():
    from medstack.config import RuntimeConfig

    cases = {
        "threads": ({"task_runner": "threads", "max_workers": 3}, 3, "3 at a time"),
        "processes": ({"task_runner": "processes"}, 2, "2 at a time, one process each"),
        "local dask": ({"task_runner": "dask", "dask": {"n_workers": 3, "threads_per_worker": 2}}, 6,
                       "6 at a time, on a temporary local Dask cluster"),
        "cluster": ({"task_runner": "dask", "dask": {"address": "tcp://sched.lab:8786"}}, None,
                    "on the Dask cluster at tcp://sched.lab:8786"),
    }
    for name, (runtime, width, where) in cases.items():
        assert progress.parallelism(RuntimeConfig.model_validate(runtime)) == (width, where), name
    shown = progress.RunProgress(None, live=False, stream=io.StringIO(), where="on the Dask cluster at tcp://x:1")
    assert shown.apply(FoldsPlanned(20)) == "training 20 models (on the Dask cluster at tcp://x:1)"
    shown(FoldFinished("ldam", 0, from_cache=False, seconds=10.0, done=1, total=20))
    # Width unknown: estimated from the folds in flight, at least one at a time (19 folds left x 10 s).
    assert shown.state.seconds_left(now=shown.state.started) == pytest.approx(190.0)


def _run_with_predictions(run: Path, rows, labels, probas) -> Path:
    """A run folder holding only what the paired comparison reads: test_predictions.csv and config.yaml."""
    import numpy as np

    from medstack.run_folder import predictions_frame

    run.mkdir(parents=True)
    predictions_frame(np.asarray(rows), np.asarray(labels), probas, ["normal", "pneumonia"]).to_csv(
        run / "test_predictions.csv", index=False)
    (run / "config.yaml").write_text("data: {positive_class: 1}\n")
    return run


def test_compare_pairs_roc_auc_on_the_same_test_images_only(tmp_path):
    import numpy as np

    from medstack.console.runs import compare_rows, paired_roc_auc

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 80)
    noisy = np.clip(0.3 * labels + 0.7 * rng.random(80), 0, 1)

    def as_proba(score):
        return np.column_stack([1 - score, score])

    rows = np.arange(100, 180)
    a = _run_with_predictions(tmp_path / "a", rows, labels, {"m": as_proba(noisy), "same": as_proba(noisy)})
    # B lists its rows in another order: pairing follows the dataset row, not the line.
    order = rng.permutation(80)
    b = _run_with_predictions(tmp_path / "b", rows[order], labels[order],
                              {"m": as_proba(labels[order] * 0.9 + 0.05), "same": as_proba(noisy[order])})
    paired = paired_roc_auc(a, b, ["m", "same"])
    assert paired["same"] == (0.0, 0.0) and paired["m"][0] > 0  # B's m is perfect: better on every resample
    metrics = {"models": {"m": {"test": {"roc_auc": 0.8}}}}
    _, [row] = compare_rows(metrics, {"models": {"m": {"test": {"roc_auc": 1.0}}}}, paired)
    assert row == ["m", "roc_auc", "0.800", "1.000", "+0.200", f"{paired['m'][0]:+.3f} to {paired['m'][1]:+.3f}"]
    other = _run_with_predictions(tmp_path / "c", rows + 1, labels, {"m": as_proba(noisy)})
    assert paired_roc_auc(a, other, ["m"]) == {}  # other test images: nothing to pair
