"""A `medstack serve-model` process for the tests that talk HTTP to it (tests/test_serving*.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

MEDSTACK = str(Path(sys.executable).with_name("medstack"))


def server_env(**extra: str) -> dict[str, str]:
    """This process's environment without API keys a developer's shell may hold, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "MEDSTACK_API_KEYS"}
    return {**env, **extra}


class Server:
    """A `medstack serve-model` process; stderr is collected line by line while it runs."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None):
        self.lines: list[str] = []
        self.process = subprocess.Popen([MEDSTACK, "serve-model", *args], cwd=cwd, env=env or server_env(),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._wait_for_url(timeout=240)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if line.startswith("listening on "):
                    return line.split()[2]
            if self.process.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"server exited {self.process.returncode}:\n" + "\n".join(self.lines))
            time.sleep(0.2)
        raise AssertionError("server did not start:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)  # what systemd and docker send
        try:
            code = self.process.wait(30)
        finally:
            self.process.kill()
        self._reader.join(10)  # every line it printed, up to the last
        return code
