"""Every row of docs/BAD_INPUTS.md: one clear error through the real flow, and nothing half-written left behind.

Each case builds its bad input in tmp_path and runs ``medstack run`` in this process (the real flow on a Prefect test
server; for config rows also ``check-config``): the error type and message, exit code 2 with the culprit named in
a few lines on stderr, and no run folder or cache entry left. tests/test_cli.py runs one row of each error kind
again as a subprocess of the console script, as a person meets it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from PIL import Image

from medstack.config import ConfigError, RunConfig, load_config
from medstack.data import DataError
from medstack.outputs import OutputError
from medstack.splits import SplitError

pytestmark = pytest.mark.e2e


def _png(path: Path, size=(12, 12), mode="L", value=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    pixels = rng.integers(0, 255, shape).astype(np.uint8) if value is None else np.full(shape, value, np.uint8)
    Image.fromarray(pixels, mode).save(path)


def _folder(root: Path, counts=(8, 8)) -> Path:
    for name, n in zip(("benign", "malignant"), counts):
        for i in range(n):
            _png(root / name / "sub" / f"{name}-{i}.png")
    return root


def _breakhis(root: Path, patients=(6, 6), per_patient: int = 3) -> Path:
    """BreakHis-named PNGs: patients 14-<n>B (benign) and 14-<n>M (malignant), ``per_patient`` images each."""
    for name, code, n in zip(("benign", "malignant"), "BM", patients):
        for p in range(n):
            for seq in range(per_patient):
                _png(root / name / f"SOB_{code}_TA_14-{p}{code}" / f"SOB_{code}_TA-14-{p}{code}-40-{seq:03d}.png")
    return root


def _grouped_cfg(path: Path, group_by: dict | None = None) -> dict:
    return {"data": {**_folder_cfg(path)["data"], "group_by": group_by or {"kind": "breakhis"}}}


def _breakhis_in_wrong_folder(t: Path) -> dict:
    root = _breakhis(t / "d")
    stray = root / "malignant/SOB_M_TA_14-2M/SOB_M_TA-14-2M-40-001.png"
    stray.rename(root / "benign" / stray.name)  # a malignant image dropped into benign/
    return _grouped_cfg(root)


def _csv_missing_one(t: Path) -> dict:
    root = _breakhis(t / "d")
    rows = [f"{f.relative_to(root).as_posix()},{f.name.split('-')[2]}" for f in sorted(root.rglob("*.png"))[1:]]
    (t / "g.csv").write_text("file,patient\n" + "\n".join(rows) + "\n")
    return _grouped_cfg(root, {"kind": "csv", "path": str(t / "g.csv"), "group_column": "patient"})


def _npz(path: Path, **arrays) -> Path:
    rng = np.random.default_rng(0)
    base = {
        "images": rng.integers(0, 255, (40, 8, 8)).astype(np.uint8),
        "labels": np.array([0] * 30 + [1] * 10).reshape(-1, 1),
    }
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def _folder_cfg(path: Path) -> dict:
    return {"data": {"source": "folder", "path": str(path), "image_size": [12, 12], "channels": 1}}


def _npz_cfg(path: Path) -> dict:
    return {"data": {"source": "npz", "name": "bad", "path": str(path)}}


# (id, builds the bad input and returns config overrides, expected error type, message pattern)
Case = tuple[str, Callable[[Path], dict], type, str]
DATA_CASES: list[Case] = [
    ("folder-missing", lambda t: _folder_cfg(t / "nope"), DataError, "image folder not found"),
    ("folder-empty", lambda t: (t / "empty").mkdir() or _folder_cfg(t / "empty"), DataError, "no class folders"),
    ("folder-one-class", lambda t: _folder_cfg(_folder(t / "d", counts=(8, 0)).joinpath()), DataError, "only one class folder|has no images"),
    ("folder-class-without-images", lambda t: (_folder(t / "d"), (t / "d" / "other").mkdir(), (t / "d" / "other" / "notes.txt").write_text("x"), _folder_cfg(t / "d"))[-1], DataError, "class 'other' has no images"),
    ("folder-corrupt-png", lambda t: (_folder(t / "d"), (t / "d" / "benign" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken"), _folder_cfg(t / "d"))[-1], DataError, r"broken\.png: unreadable image"),
    ("folder-symlink-loop", lambda t: (_folder(t / "d"), os.symlink(t / "d" / "benign", t / "d" / "benign" / "sub" / "loop"), _folder_cfg(t / "d"))[-1], DataError, "reached a folder twice via symlinks"),
    ("npz-missing-keys", lambda t: _npz_cfg(_npz(t / "x.npz", labels=None)), DataError, "missing keys"),
    ("npz-labels-out-of-range", lambda t: {**_npz_cfg(_npz(t / "x.npz", labels=np.array([0] * 30 + [5] * 10))), "data": {**_npz_cfg(t / "x.npz")["data"], "class_names": ["a", "b"]}}, DataError, "label 5 found but only 2 class names"),
    ("npz-labels-not-integer", lambda t: _npz_cfg(_npz(t / "x.npz", labels=np.linspace(0, 1, 40))), DataError, "must hold integer class indices"),
    ("npz-length-mismatch", lambda t: _npz_cfg(_npz(t / "x.npz", labels=np.zeros(39, int))), DataError, "39 labels but its images key has 40 images"),
    ("npz-nan-pixels", lambda t: _npz_cfg(_npz(t / "x.npz", images=np.full((40, 8, 8), np.nan))), DataError, "NaN/inf pixel values"),
    ("npz-wrong-rank", lambda t: _npz_cfg(_npz(t / "x.npz", images=np.zeros((40, 64), np.uint8))), DataError, r"must be \(N, H, W\)"),
    ("minority-too-small-to-split", lambda t: {**_npz_cfg(_npz(t / "x.npz", labels=np.array([0] * 37 + [1] * 3)))}, SplitError, r"cannot stratify val vs test: class counts \[7, 1\]"),
    ("folds-exceed-minority", lambda t: {**_npz_cfg(_npz(t / "x.npz", labels=np.array([0] * 28 + [1] * 12))), "split": {"folds": 12}}, SplitError, r"train split \(folds\): class\(es\) \[1\] have \{1: \d+\} samples, need at least 12 each"),
    ("smote-minority-of-one", lambda t: {**_npz_cfg(_npz(t / "x.npz", labels=np.array([0] * 36 + [1] * 4))), "split": {"folds": 2, "fractions": [0.5, 0.25, 0.25]}, "strategies": {"smote": {}}}, ValueError, "SMOTE needs at least 2 samples per class"),
    ("group-name-unmatched", lambda t: _grouped_cfg(_folder(t / "d")), DataError, r"benign-0\.png: no group id: 'benign-0\.png' does not match the BreakHis pattern SOB_<B\|M>_<type>-<patient>-<mag>-<seq>\.png"),
    ("group-breakhis-wrong-folder", _breakhis_in_wrong_folder, DataError, r"benign/SOB_M_TA-14-2M-40-001\.png: its BreakHis name says malignant but it is in the class folder 'benign'"),
    ("group-csv-missing-row", _csv_missing_one, DataError, r"SOB_B_TA-14-0B-40-000\.png: not listed in group_by csv .*g\.csv \(column 'file'\)"),
    ("group-too-few-patients", lambda t: _grouped_cfg(_breakhis(t / "d", patients=(8, 2), per_patient=6)), SplitError, r"the dataset \(one group per split\): class\(es\) \[1\] have images of only \{1: 2\} groups, need at least 3 groups each"),
    ("group-folds-exceed-patients", lambda t: {**_grouped_cfg(_breakhis(t / "d", patients=(12, 5))), "split": {"folds": 4}}, SplitError, r"the train split \(folds\): class\(es\) \[1\] have images of only \{1: \d\} groups, need at least 4"),
    ("group-calibration-too-few-patients", lambda t: {**_grouped_cfg(_breakhis(t / "d", patients=(8, 8))), "split": {"fractions": [0.5, 0.25, 0.25]}}, SplitError, r"conformal calibration slice \(10% of the train split\): cannot carve the calibration split \(about 1/10 of the rows\) from 8 groups.*conformal.calibration: oof"),
    ("output-dir-not-writable", lambda t: {**_npz_cfg(_npz(t / "x.npz")), "runtime": {"output_dir": str(t / "x.npz" / "runs")}}, OutputError, "cannot be created"),
    ("cache-dir-not-writable", lambda t: {**_npz_cfg(_npz(t / "x.npz")), "runtime": {"output_dir": str(t / "runs"), "cache_dir": str(t / "x.npz" / "cache")}}, OutputError, "cache dir .* cannot be created"),
]
CONFIG_CASES: list[tuple[str, dict, str]] = [
    ("unknown-key", {"trainig": {}}, "trainig"),
    ("wrong-type", {"training": {"epochs": "ten"}}, "training.epochs"),
    ("folds-below-two", {"split": {"folds": 1}}, "split.folds"),
    ("fractions-not-one", {"split": {"fractions": [0.8, 0.2, 0.2]}}, "must sum to 1"),
    ("unknown-strategy", {"strategies": {"mixup": {}}}, "unknown strategy 'mixup'"),
    ("group-regex-invalid", {"data": {"source": "folder", "path": "d", "image_size": [8, 8], "group_by": {"kind": "filename_regex", "pattern": "(p[0-9]"}}}, "data.group_by.pattern '\\(p\\[0-9\\]' is not a valid regex"),
    ("group-by-on-npz", {"data": {"source": "npz", "group_by": {"kind": "breakhis"}}}, "data.group_by kind 'breakhis' does not work with data.source 'npz'"),
    ("name-with-path", {"name": "../../evil"}, "'../../evil' is not a plain name"),
    ("student-without-slice", {"conformal": {"calibration": "oof"}, "distill": {"enabled": True}},
     "distill.enabled needs conformal.calibration: split"),
]


def _tiny(tmp_path: Path, overrides: dict) -> dict:
    tree = {
        "model": {"filters": [4], "convs_per_block": 1, "dense_units": 8, "batch_norm": False, "head": "gap"},
        "augmentation": {"rotation": 0.0, "zoom": 0.0, "shift": 0.0},  # no random layers, so XLA would compile: jit_compile off
        # One pass and no step floor: these runs prove what a run says about its data, not what a model learns.
        "training": {"epochs": 1, "jit_compile": False, "min_steps": 0, "min_epoch_steps": 0, "stop_after_steps": 0,
                     "patience_steps": 1},
        "split": {"folds": 2},
        "strategies": {"class_weight": {}},
        "distill": {"enabled": False},
        "ensemble": {"inner_folds": 2},
        "report": {"bootstrap": 10},
        # One training at a time: two threads tracing Keras functions at once can trip CPython 3.11's AST parser
        # ("SystemError: AST constructor recursion depth mismatch", seen once on the SMOTE row in-process).
        "runtime": {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "runs"), "max_workers": 1,
                    "task_runner": "threads"},
    }
    for key, value in overrides.items():
        merge = isinstance(value, dict) and key != "strategies"  # a case's strategies replace the default
        tree[key] = {**tree.get(key, {}), **value} if merge else value
    return tree


def _assert_nothing_written(tree: dict) -> None:
    runs, cache = Path(tree["runtime"]["output_dir"]), Path(tree["runtime"]["cache_dir"])
    assert not runs.is_dir() or list(runs.iterdir()) == []
    assert not (cache / "folds").is_dir() or list((cache / "folds").iterdir()) == []


KIND = {DataError: "data error", SplitError: "split error", OutputError: "output error", ValueError: "data error"}


def assert_reads_well(stderr: str) -> None:
    """No traceback; the error is a short block at the end of stderr, after at most a few progress/retry lines."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    [start] = [i for i, line in enumerate(lines) if re.match(r"medstack: [a-z' ]+(error|failed)( \(\w+\))?: ", line)]
    assert len(lines) - start <= 5 and len(lines) <= 12, stderr


def run_cli(argv: list[str], capsys, monkeypatch) -> tuple[int, str, str, list[BaseException]]:
    """``medstack ARGV`` in this process: (exit code, stdout, stderr, the exceptions the CLI reported)."""
    from medstack.cli import main
    from medstack.console import errors

    reported: list[BaseException] = []
    real_report = errors.report

    def recording_report(exc, **kwargs):
        reported.append(exc)
        return real_report(exc, **kwargs)

    monkeypatch.delenv("MEDSTACK_DEBUG", raising=False)
    monkeypatch.setattr(errors, "report", recording_report)
    saved = dict(os.environ)  # `medstack run` sets defaults for its worker processes: not for the next test
    try:
        code = main(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out, err = capsys.readouterr()
    return code, out, err, reported


def _write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case_id, build, error, pattern", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_fails_clearly_through_the_flow(prefect_harness, tmp_path, capsys, monkeypatch, case_id, build,
                                                 error, pattern):
    """`medstack run` on the row's input, in this process (tests/test_cli.py runs one row of each kind as a
    subprocess): the flow raises the row's error type and message, the CLI turns it into a few lines and exit 2,
    and nothing is left in the output folder or the cache. An output or cache folder that cannot be written is
    refused by the command before the flow (and a Prefect server) starts, and by the flow itself, which deployment
    runs reach without the command."""
    import medstack.flows.ensemble as ensemble

    tree = _tiny(tmp_path, build(tmp_path))
    flow_calls = []
    real_flow = ensemble.ensemble_flow
    monkeypatch.setattr(ensemble, "ensemble_flow", lambda **kw: flow_calls.append(kw) or real_flow(**kw))
    code, out, err, reported = run_cli(["run", "--config", str(_write(tmp_path, tree))], capsys, monkeypatch)
    if error is OutputError:
        assert flow_calls == []
        with pytest.raises(OutputError, match=pattern):
            real_flow(config=RunConfig.model_validate(tree))
    else:
        assert len(flow_calls) == 1
    [exc] = reported
    assert isinstance(exc, error) and re.search(pattern, str(exc)), repr(exc)
    assert code == 2 and out == "", err
    assert re.search(pattern, err) and f"medstack: {KIND[error]}: " in err, err
    assert_reads_well(err)
    _assert_nothing_written(tree)


@pytest.mark.parametrize("case_id, overrides, pattern", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_fails_at_the_boundary(tmp_path, capsys, monkeypatch, case_id, overrides, pattern):
    tree = _tiny(tmp_path, overrides)
    path = _write(tmp_path, tree)
    with pytest.raises(ConfigError, match=pattern):
        load_config(path)
    for command in ("run", "check-config"):  # the console script says it the same way for both
        code, _, err, _ = run_cli([command, "--config", str(path)], capsys, monkeypatch)
        assert code == 2 and re.search(pattern, err) and f"medstack: config error: {path}: invalid config:" in err, err
        assert_reads_well(err)
    _assert_nothing_written(tree)


@pytest.mark.slow
def test_small_minority_lowers_smote_k_and_says_so(prefect_harness, tmp_path):
    from medstack.flows.ensemble import ensemble_flow

    labels = np.array([0] * 52 + [1] * 8)
    rng = np.random.default_rng(0)
    tree = _tiny(tmp_path, {**_npz_cfg(_npz(tmp_path / "x.npz", images=rng.integers(0, 255, (60, 8, 8)).astype(np.uint8), labels=labels)), "strategies": {"smote": {"k_neighbors": 5}}})
    cfg = RunConfig.model_validate(tree)
    run = Path(ensemble_flow(config=cfg))
    assert "k_neighbors lowered from 5 to" in (run / "report.md").read_text()


@pytest.mark.slow
def test_patient_groups_and_skipped_files_are_stated_in_metrics_and_report(prefect_harness, tmp_path):
    import json

    from medstack.flows.ensemble import ensemble_flow

    root = _breakhis(tmp_path / "d", patients=(8, 8))
    # A broken file in a patient's folder: with on_bad_image skip it is left out before grouping and listed.
    (root / "benign" / "SOB_B_TA_14-0B" / "SOB_B_TA-14-0B-40-099.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    # 8 training patients are too few for a held-out calibration slice (group-calibration-too-few-patients): the
    # sets are calibrated on the OOF predictions, and the report labels them empirical coverage only.
    tree = _tiny(tmp_path, {**_grouped_cfg(root), "split": {"fractions": [0.5, 0.25, 0.25]},
                            "conformal": {"calibration": "oof"}})
    tree["data"]["on_bad_image"] = "skip"
    cfg = RunConfig.model_validate(tree)
    run = Path(ensemble_flow(config=cfg))
    grouping = json.loads((run / "metrics.json").read_text())["dataset"]["grouping"]
    assert grouping["kind"] == "breakhis" and grouping["groups"] == 16
    assert grouping["images_per_group"] == {"min": 3, "median": 3.0, "max": 3}
    assert grouping["crossing_splits"] == grouping["crossing_folds"] == 0
    report = (run / "report.md").read_text()
    assert "- Patient grouping (breakhis, ids from BreakHis file names" in report
    assert "grouping by BreakHis file names" in report and "16 groups, 3/3/3 images per group" in report
    assert "**Empirical coverage only.**" in report and not (run / "calibration_predictions.csv").exists()
    assert "SOB_B_TA-14-0B-40-099.png" in report  # the skip policy lists every file it skipped
