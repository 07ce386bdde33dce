"""Servers a test starts and talks to (the session's Prefect test server in conftest.py, the Prefect stack of
tests/test_deployments.py, `mlflow server`): a free loopback port, waiting until the server answers its health route,
stopping its process group, and Debian's Chromium to open their UIs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120, what: str = "the server") -> None:
    """Return once GET ``url`` answers 200; fail with the end of ``log`` if ``proc`` exits first or ``timeout``
    seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"{what} exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, \
            f"{what} did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.3)


def stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the process group ``proc`` leads (started with ``start_new_session=True``), SIGKILL after ``grace``
    seconds if it is still there."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def chromium() -> Iterator:
    """Debian's Chromium, headless, driven by Playwright (which never downloads a browser here); the test skips,
    saying why, when either is missing."""
    if not CHROMIUM.is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM}: .ci/run installs Debian's chromium; install it to run this "
                    "test")
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' brings Playwright")
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
