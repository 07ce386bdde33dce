"""runtime.task_runner: dask against a real cluster this module starts on 127.0.0.1: a `dask scheduler` and two
`dask worker` processes (no nanny, so each worker's pid is the process we started and a killed one stays dead)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from medstack.storage import _host_tag

distributed = pytest.importorskip("distributed")
pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
DASK = str(Path(sys.executable).with_name("dask"))


@dataclass
class Cluster:
    address: str
    workers: dict[int, subprocess.Popen]  # pid -> worker process

    def client(self) -> "distributed.Client":
        return distributed.Client(self.address, timeout=60, set_as_default=False)


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([DASK, *args], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from _cluster(tmp_path, [[], []])


def _cluster(tmp_path: Path, worker_args: list[list[str]]) -> Iterator[Cluster]:
    """A scheduler and one single-threaded worker per entry of ``worker_args`` (extra `dask worker` options)."""
    file = tmp_path / "scheduler.json"
    procs = [_start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(file)],
                    tmp_path / "scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        while not file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert file.is_file(), (tmp_path / "scheduler.log").read_text()[-2000:]
        address = json.loads(file.read_text())["address"]
        workers = {}
        for i, extra in enumerate(worker_args):
            proc = _start(["worker", "--scheduler-file", str(file), "--host", "127.0.0.1", "--nthreads", "1",
                           "--no-nanny", "--no-dashboard", "--name", f"w{i}", *extra], tmp_path / f"worker{i}.log")
            procs.append(proc)
            workers[proc.pid] = proc
        with distributed.Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(len(worker_args), timeout=120)
        yield Cluster(address, workers)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=5)  # a worker or scheduler still closing its connections after 5 s is killed
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _medstack_run(config: Path, tmp_path: Path, tag: str, *sets: str, env: dict | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "medstack", "run", "--config", str(config), "--output-dir", str(tmp_path / f"runs-{tag}"),
            "--cache-dir", str(tmp_path / f"cache-{tag}")]
    for value in sets:
        args += ["--set", value]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / f"home-{tag}"), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 900) -> Path:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return Path(out.strip().splitlines()[-1].removeprefix("run folder: "))


def _dask(cluster: Cluster) -> tuple[str, str]:
    return "runtime.task_runner=dask", f"runtime.dask.address={cluster.address}"


@pytest.fixture(scope="module")
def tiny_config(tiny_reference) -> Path:
    """The config of conftest's shared tiny reference run (2 strategies x 2 folds on 300 digits, 60 steps a fold:
    long enough for a worker to be killed mid-training)."""
    return tiny_reference / "config.yaml"


@pytest.fixture(scope="module")
def threads_run(tiny_reference) -> Path:
    """The tiny config through the flow in a test process with the threads runner, as conftest pins it (own
    cache): what every cluster run must equal to the last bit."""
    return tiny_reference


def _finished_by(cache: Path) -> set[int]:
    """The process ids that wrote the fold cache's complete entries (each entry's meta.json names its worker)."""
    folds = cache / "folds"
    entries = [p for p in folds.iterdir() if not p.name.startswith(".")] if folds.is_dir() else []
    return {json.loads((p / "meta.json").read_text())["info"]["worker"]["pid"] for p in entries}


def test_a_dask_cluster_run_survives_a_killed_worker_and_equals_the_threads_run(dask_cluster, tiny_config, threads_run,
                                                                               prefect_api_env, tmp_path):
    """The flow on a two-worker cluster, fresh cache. Once both workers have each finished a fold, SIGKILL the one
    training the next: Dask moves its task to the other worker and the run completes. Every fold trained in one of
    the two worker processes (host and pid recorded per fold; both trained), no fold is in the cache twice, nothing
    the victim left half-written stays there, and the metrics equal those of the threads run to the last bit: CPU
    training here is deterministic for a given seed in any process."""
    proc = _medstack_run(tiny_config, tmp_path, "dask", *_dask(dask_cluster), env=prefect_api_env)
    cache = tmp_path / "cache-dask"
    with dask_cluster.client() as client:
        pid_of = client.run(os.getpid)  # worker address -> its pid
        deadline, busy = time.monotonic() + 300, None
        while busy is None and time.monotonic() < deadline and proc.poll() is None:
            # Each worker has finished a fold (one worker may take two while the other still imports TensorFlow).
            if _finished_by(cache) == set(dask_cluster.workers):
                busy = next((addr for addr, keys in client.processing().items() if keys), None)
            time.sleep(0.1)
        assert busy is not None, "no worker was training once each worker had finished a fold"
        # The worker that just stored its fold may still be ending that task (reporting its state): a kill then
        # would leave nothing to retrain. A second later it is on its next fold, or idle and not chosen.
        time.sleep(1)
        busy, until = None, time.monotonic() + 10  # none, should the last fold end and the run finish meanwhile
        while busy is None and time.monotonic() < until and proc.poll() is None:
            busy = next((addr for addr, keys in client.processing().items() if keys), None)
            time.sleep(0.1)
        assert busy is not None, "no worker was training a second after each worker had finished a fold"
        victim = pid_of[busy]
        # A kill seldom lands while the victim writes a cache entry, so leave what that would: a half-written
        # temporary under its name. The run removes it once its trainings are done (its writer is dead by then).
        half = cache / "folds" / f".{'0' * 16}.{_host_tag()}-{victim}-abcd1234.tmp"
        half.mkdir(parents=True, exist_ok=True)
        (half / "predictions.npz").write_bytes(b"half")
        os.kill(victim, signal.SIGKILL)
        dask_cluster.workers[victim].wait(timeout=30)

    run = _finish(proc)
    manifest = json.loads((run / "manifest.json").read_text())
    # Each fold trained once. Should the kill still land between a fold's store and Dask hearing its task end, the
    # survivor reruns that task and finds the victim's entry: at most one hit, written by the victim.
    assert manifest["trained"] + manifest["cache_hits"] == 4 and manifest["cache_hits"] <= 1, manifest
    assert all(f["worker"]["pid"] == victim for f in manifest["folds"].values() if f["from_cache"])
    ran_in = {fold["worker"]["pid"] for fold in manifest["folds"].values()}
    assert ran_in == set(dask_cluster.workers), (ran_in, set(dask_cluster.workers))  # both trained
    finished_by_victim = {k for k, f in manifest["folds"].items() if f["worker"]["pid"] == victim}
    assert 1 <= len(finished_by_victim) < 3  # its first fold; the one it was training went to the survivor
    assert json.loads((run / "metrics.json").read_text()) == json.loads((threads_run / "metrics.json").read_text())
    entries = list((cache / "folds").iterdir())
    assert sorted(e.name for e in entries) == sorted(f["cache_key"] for f in manifest["folds"].values())
    assert yaml.safe_load((run / "config.yaml").read_text())["runtime"]["dask"]["address"] == dask_cluster.address


def test_trainings_go_only_to_workers_that_declare_a_gpu(tmp_path, tiny_config_dict, prefect_harness):
    """gpus_per_training: auto. One worker declares `--resources GPU=1` (and has two threads), the other none: every
    training runs on the GPU worker, one at a time, although the other worker sits idle. The flow runs in this
    process and hears every epoch of both trainings from the GPU worker's process (Dask's structured events)."""
    from medstack.config import load_config
    from medstack.flows.ensemble import ensemble_flow
    from medstack.progress import EpochEnded, listening

    cluster = _cluster(tmp_path, [["--resources", "GPU=1", "--nthreads", "2"], []])
    gpu_worker = next(cluster)
    heard = []
    try:
        tiny_config_dict["data"]["subset"] = {"train": 120, "val": 40, "test": 40}
        tiny_config_dict["strategies"] = {"class_weight": {}}  # 2 trainings: enough to see where and one at a time
        config = tmp_path / "tiny.yaml"
        config.write_text(yaml.safe_dump(tiny_config_dict))
        cfg = load_config(config, {"runtime.task_runner": "dask", "runtime.dask.address": gpu_worker.address})
        with listening(heard.append):
            run = Path(ensemble_flow(config=cfg))
    finally:
        cluster.close()
    folds = json.loads((run / "manifest.json").read_text())["folds"]
    spans = sorted((f["worker"]["started"], f["worker"]["finished"], f["worker"]["pid"]) for f in folds.values())
    gpu_pid = next(iter(gpu_worker.workers))
    assert {pid for _, _, pid in spans} == {gpu_pid}
    assert all(end <= next_start for (_, end, _), (next_start, _, _) in zip(spans, spans[1:]))  # never two at once
    for key, fold in folds.items():
        epochs = [e.epoch for e in heard if isinstance(e, EpochEnded) and e.pid == gpu_pid and
                  e.fold == int(key.rpartition("-")[2]) - 1]
        assert epochs == list(range(1, fold["epochs_run"] + 1)), key
