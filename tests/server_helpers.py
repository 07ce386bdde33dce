"""Starting a server a test talks to: a free loopback port, and waiting until the server answers its health route
(the session's Prefect test server in conftest.py, the Prefect stack of tests/test_deployments.py, `mlflow server`)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path


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
