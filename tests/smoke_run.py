"""The session's smoke run: one `medstack run` of configs/smoke.yaml in the background, started by the first test
process that asks (a file lock shared by the pytest-xdist workers), its outcome left beside it for every process to
read. The fixtures that use it are in conftest.py."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PNEUMONIA_NPZ = REPO.parent / "shared" / "data" / "pneumoniamnist.npz"


def smoke_env(shared: Path) -> dict[str, str]:
    """The smoke run's environment: the registry at its default place (under XDG_DATA_HOME), not $MEDSTACK_REGISTRY."""
    env = {k: v for k, v in os.environ.items() if k != "MEDSTACK_REGISTRY"}
    env["XDG_DATA_HOME"] = str(shared / "smoke-bundle" / "xdg-data")
    return env


def smoke_cache(base: Path) -> Path:
    """The smoke run's fold cache: under its folder, or ``MEDSTACK_TEST_CACHE_DIR`` (kept between sessions)."""
    return Path(os.environ.get("MEDSTACK_TEST_CACHE_DIR") or base / "cache")


# Runs `medstack run` for the smoke bundle and leaves its outcome beside it: exit-ok or exit-failed, and its output.
_SMOKE_LAUNCHER = """
import pathlib, subprocess, sys
base = pathlib.Path(sys.argv[1])
done = subprocess.run(sys.argv[2:], cwd=base, capture_output=True, text=True, timeout=900)
(base / "stdout.txt").write_text(done.stdout)
(base / "stderr.txt").write_text(done.stderr)
(base / ("exit-ok" if done.returncode == 0 else "exit-failed")).write_text(str(done.returncode))
"""


def start_smoke_run(shared: Path, api_env: Callable[[], dict[str, str]] | None = None):
    """Start the smoke run in the background unless a process of this session already did; the Popen or None.
    ``api_env``: called only by the process that starts the run, it names the Prefect server to report to
    (conftest's ``prefect_api_env``) instead of a temporary one."""
    import fcntl
    import subprocess

    base = shared / "smoke-bundle"
    with open(shared / "smoke-bundle.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if base.is_dir():
            return None
        base.mkdir()  # claimed: the others wait for its outcome, not on this lock
    command = [str(Path(sys.executable).with_name("medstack")), "run", "--config", str(REPO / "configs" / "smoke.yaml"),
               "--data", str(PNEUMONIA_NPZ), "--output-dir", str(base / "runs"), "--cache-dir", str(smoke_cache(base)),
               "--set", "registry.promote=auto"]
    try:
        env = {**smoke_env(shared), **(api_env() if api_env else {})}
    except BaseException as exc:  # the processes waiting for the outcome learn why there is none
        (base / "stderr.txt").write_text(f"the smoke run could not start: {exc!r}")
        (base / "exit-failed").write_text("not started")
        raise
    return subprocess.Popen([sys.executable, "-c", _SMOKE_LAUNCHER, str(base), *command], env=env)


# How much lower than the smoke run a test process runs (nice values: 0 is the default, 19 the lowest).
BELOW_THE_SMOKE_RUN = 5


def yield_cores_to_the_smoke_run() -> None:
    """Lower the nice value of every thread of this test process by :data:`BELOW_THE_SMOKE_RUN`, for the rest of
    the session (an unprivileged process cannot raise it again). Threads and processes it starts later inherit it.

    Half the suite's modules wait for the smoke bundle. At equal priority its 36 CPU-s of training shared 2 cores
    with 3 pytest-xdist workers and what they start, and it finished about 200 s into a 365 s suite (a module waited
    50 s for it while a core sat partly idle); with the workers lowered it finished at 86 s of a 341 s suite, and
    idle core-seconds fell from 55 to 24 (one timeline each, at 010b43f and 71b16ae, 2-core CPU, alone).

    Nice values rank threads within one scheduling group: with Linux's autogroup (on here), a process started in a
    new session (``start_new_session=True``: the Prefect servers, Dask workers and runs of several modules) is a
    group of its own and competes as one, whatever it inherited. The smoke run is started in the workers' session,
    so it gains. Linux keeps a nice value per thread, so each one is lowered; elsewhere this does nothing."""
    with contextlib.suppress(OSError):  # no /proc (not Linux), or a priority this system refuses to change
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                now = os.getpriority(os.PRIO_PROCESS, int(tid))
                os.setpriority(os.PRIO_PROCESS, int(tid), min(19, now + BELOW_THE_SMOKE_RUN))
