import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medstack.pipeline import FoldCache, FoldResult
from medstack.storage import (
    _writer_tag,
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    sweep_stale_temporaries,
)

K1 = "0123456789abcdef"
REPO = Path(__file__).resolve().parents[1]


def _result(key=K1) -> FoldResult:
    return FoldResult(
        strategy="smote",
        fold=1,
        cache_key=key,
        oof_index=np.array([3, 5]),
        oof_proba=np.array([[0.2, 0.8], [0.6, 0.4]]),
        val_proba=np.array([[0.5, 0.5]]),
        test_proba=np.array([[0.1, 0.9]]),
        cal_proba=np.array([[0.3, 0.7], [0.8, 0.2]]),
        history={"loss": [1.0, 0.5]},
        info={"epochs_run": 2},
    )


def _fake_model(path):
    with zipfile.ZipFile(path, "w") as archive:  # .keras files are zip archives
        archive.writestr("config.json", "{}")


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "m.json"
    atomic_write_json(target, {"x": np.float32(1.5), "arr": np.arange(2)})
    atomic_write_text(target, '{"x": 2}')
    assert json.loads(target.read_text()) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]


def test_atomic_directory_removes_everything_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "run") as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("crash mid-run")
    assert list(tmp_path.iterdir()) == []


def test_cache_round_trip(tmp_path):
    cache = FoldCache(tmp_path)
    assert cache.load(K1) is None
    saved = cache.save(_result(), _fake_model)
    loaded = cache.load(K1)
    assert loaded.from_cache and not saved.from_cache
    assert np.array_equal(loaded.oof_proba, saved.oof_proba) and loaded.history == {"loss": [1.0, 0.5]}
    assert loaded.model_path.endswith("model.keras")


@pytest.mark.parametrize("damage", ["truncate_npz", "drop_model", "truncate_model", "symlink_model", "wrong_format", "bad_json"])
def test_broken_cache_entry_is_discarded_with_a_warning(tmp_path, caplog, damage):
    cache = FoldCache(tmp_path)
    cache.save(_result(), _fake_model)
    entry = cache.entry(K1)
    if damage == "truncate_npz":
        data = (entry / "predictions.npz").read_bytes()
        (entry / "predictions.npz").write_bytes(data[: len(data) // 2])
    elif damage == "drop_model":
        (entry / "model.keras").unlink()
    elif damage == "truncate_model":
        data = (entry / "model.keras").read_bytes()
        (entry / "model.keras").write_bytes(data[: len(data) // 2])
    elif damage == "symlink_model":  # would be copied into run folders: what it points to is not the cache's
        outside = tmp_path / "outside.keras"
        (entry / "model.keras").rename(outside)
        (entry / "model.keras").symlink_to(outside)
    elif damage == "wrong_format":
        meta = json.loads((entry / "meta.json").read_text())
        (entry / "meta.json").write_text(json.dumps({**meta, "format": 999}))
    else:
        (entry / "meta.json").write_text("{not json")
    assert cache.load(K1) is None
    assert "discarding broken cache entry" in caplog.text
    assert not entry.exists()


def test_failed_model_write_leaves_no_entry(tmp_path):
    cache = FoldCache(tmp_path)

    def explode(path):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cache.save(_result(), explode)
    assert cache.load(K1) is None
    assert list((tmp_path / "folds").iterdir()) == []


@pytest.mark.parametrize("key", ["../evil", "k1", "0123456789ABCDEF", "0123456789abcdef/x", ""])
def test_cache_keys_are_hex_only(tmp_path, key):
    with pytest.raises(ValueError, match="cache key must be"):
        FoldCache(tmp_path).entry(key)


def test_temporaries_start_with_a_dot_end_in_tmp_and_name_their_writer(tmp_path, monkeypatch):
    with atomic_directory(tmp_path / "run") as tmp:
        assert tmp.name.startswith(".run.") and tmp.name.endswith(".tmp") and f"{_writer_tag()}-" in tmp.name
        seen = []
        monkeypatch.setattr(os, "replace", lambda src, dst: seen.append(Path(src).name))
        atomic_write_text(tmp / "a.json", "{}")
        monkeypatch.undo()
    assert seen[0].startswith(".a.json.") and seen[0].endswith(".tmp") and f"{_writer_tag()}-" in seen[0]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (old, old), follow_symlinks=False)


def test_sweep_removes_only_temporaries_that_no_live_writer_owns(tmp_path):
    host = _writer_tag().split("-")[0]
    folder = tmp_path / "folds"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the cache's")
    made = {
        "dead writer": folder / f".k.{host}-{_dead_pid()}-abcd1234.tmp",
        "live writer (this process)": folder / f".k.{_writer_tag()}-abcd1234.tmp",
        "another host, fresh": folder / ".k.00000000-1-abcd1234.tmp",
        "another host, a day old": folder / ".k.00000000-2-abcd1234.tmp",
        "no writer in name, fresh": folder / ".k.abcd1234.tmp",
        "no writer in name, a day old": folder / ".j.abcd1234.tmp",
        "a complete entry": folder / "0123456789abcdef",
        "a dotfile that is no temporary": folder / ".keep",
    }
    for path in made.values():
        path.mkdir(parents=True)
        (path / "half.npz").write_bytes(b"half")
    _age(made["another host, a day old"], 25 * 3600)
    _age(made["no writer in name, a day old"], 25 * 3600)
    link = folder / f".l.{host}-{_dead_pid()}-abcd1234.tmp"
    link.symlink_to(outside)

    removed = sweep_stale_temporaries(folder)

    gone = {"dead writer", "another host, a day old", "no writer in name, a day old"}
    assert set(removed) == {made[k] for k in gone} | {link}
    assert all(path.exists() != (name in gone) for name, path in made.items())
    assert not link.is_symlink() and (outside / "keep.txt").read_text() == "not the cache's"  # unlinked, not followed
    assert sweep_stale_temporaries(tmp_path / "absent") == []


_WRITER = """
import sys, time
from medstack.storage import atomic_directory
with atomic_directory(sys.argv[1]) as tmp:
    (tmp / "predictions.npz").write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(120)
"""


def test_a_sigkilled_writers_temporary_is_swept_and_a_live_writers_is_not(tmp_path):
    folds = tmp_path / "cache" / "folds"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(folds / key)], stdout=subprocess.PIPE, text=True, env=env)
        for key in ("a" * 16, "b" * 16)
    ]
    try:
        for writer in writers:
            assert writer.stdout.readline().strip() == "writing"
        killed, live = writers
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        temps = {p.name.split(".")[1]: p for p in folds.iterdir()}
        assert sorted(temps) == ["a" * 16, "b" * 16]

        assert FoldCache(tmp_path / "cache").sweep() == [temps["a" * 16]]
        assert [p.name for p in folds.iterdir()] == [temps["b" * 16].name]  # the live writer's temporary stays
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
    assert FoldCache(tmp_path / "cache").sweep() == [temps["b" * 16]]  # now its writer is gone too
    assert list(folds.iterdir()) == []


def test_a_run_that_stores_a_key_second_uses_the_first_runs_result(tmp_path):
    cache = FoldCache(tmp_path)
    first = _result()
    first.oof_proba = np.array([[0.9, 0.1], [0.3, 0.7]])

    def model_while_another_run_stores_first(path):
        FoldCache(tmp_path).save(first, _fake_model)  # the other run renames its entry into place first
        _fake_model(path)

    mine = cache.save(_result(), model_while_another_run_stores_first)
    assert np.array_equal(mine.oof_proba, first.oof_proba)  # predictions that belong to the stored model
    assert not mine.from_cache and "another run" in mine.info["notes"][-1]
    assert mine.model_path == str(cache.entry(K1) / "model.keras")
    assert [p.name for p in (tmp_path / "folds").iterdir()] == [K1]
