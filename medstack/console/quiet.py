"""Quiet by default: no TensorFlow C++ start-up lines, no Prefect chatter; ``-v`` brings Prefect's logs back.

What a person still sees by default: medstack's own warnings (one line each) and one line per retry of a
transient failure. Prefect's API log handler is left alone, so a flow run keeps its full logs, tracebacks
included, whatever the terminal shows.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import threading
from typing import Iterator, TextIO

QUIET, NORMAL, VERBOSE = -1, 0, 1


# medstack's environment defaults, written once: the CLI (quiet_environment), the tests (tests/conftest.py and their
# subprocesses), the benchmarks and, as equal copies that a test compares, prefect.yaml's work pool and .ci/run.
ENVIRONMENT_DEFAULTS: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no telemetry
    "DO_NOT_TRACK": "1",
    # 3 = errors only: hides the oneDNN notice, "Could not find cuda drivers" and friends, which TF prints from C++
    # at import time, before any Python logging could filter them.
    "TF_CPP_MIN_LOG_LEVEL": "3",
}


def quiet_environment() -> None:
    """Environment set before TensorFlow or Prefect is imported (a user's own settings win)."""
    for key, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # Prefect gives its temporary server 20 s to start; on a busy 2-core machine that is not always enough.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


# What TensorFlow's C++ side prints while it is imported, whatever TF_CPP_MIN_LOG_LEVEL says (absl logs before
# absl::InitializeLog() go straight to stderr): recognised by these fragments and dropped. Any other line is kept.
TF_STARTUP_NOISE = (
    "Could not find cuda drivers", "All log messages before absl::InitializeLog()", "oneDNN custom operations",
    "Unable to register cuDNN factory", "Unable to register cuFFT factory", "Unable to register cuBLAS factory",
    "computation placer already registered", "This TensorFlow binary is optimized", "rebuild TensorFlow with",
    "TF-TRT Warning", "cuda_executor", "failed call to cuInit",
)


@contextlib.contextmanager
def filtered_stderr(noise: tuple[str, ...] = TF_STARTUP_NOISE) -> Iterator[TextIO]:
    """File descriptor 2 (C++ writes and worker processes included) goes through a pipe; a thread passes every line
    without a ``noise`` fragment on to the terminal. Yields a stream to the terminal itself, for the display."""
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    marker = f"--medstack-stderr-filter-{os.getpid()}-{id(terminal)}--".encode()
    drained = threading.Event()

    def pump() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                if raw.strip() == marker:
                    drained.set()  # everything this process wrote before is through
                    continue
                line = raw.decode(errors="replace")
                if not any(fragment in line for fragment in noise):
                    terminal.write(line)
                    terminal.flush()
        drained.set()

    # A daemon: child processes (Prefect's temporary server) inherit the pipe and may write to it until they exit.
    thread = threading.Thread(target=pump, name="medstack-stderr-filter", daemon=True)
    thread.start()
    try:
        yield terminal
    finally:
        sys.stderr.flush()
        os.write(2, marker + b"\n")
        os.dup2(terminal.fileno(), 2)
        drained.wait(timeout=5)
        terminal.flush()


def silence_prefect_console_at_exit() -> None:
    """Prefect stops its temporary server at interpreter exit and logs it; registered after the run, this runs first
    (atexit is last-in, first-out) and keeps that line off the terminal."""
    def silence() -> None:
        from prefect.logging.handlers import PrefectConsoleHandler

        for logger in _all_loggers():
            for handler in logger.handlers:
                if isinstance(handler, PrefectConsoleHandler):
                    handler.setLevel(logging.CRITICAL + 1)

    atexit.register(silence)


def write_line(stream: TextIO, line: str) -> None:
    """Not ``print``: the flow runs with ``log_prints=True``, which would turn a print into a Prefect log record."""
    stream.write(line + "\n")
    stream.flush()


class _NoTraceback(logging.Formatter):
    """Wraps a formatter so records print without their traceback (the API handler already stored it)."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class TerminalLines(logging.Handler):
    """One plain line per medstack warning and per retry; nothing else (default and ``-q`` modes)."""

    def __init__(self, stream: TextIO | None = None, *, on_line=None):
        super().__init__(logging.DEBUG)  # line() picks the records; retries are INFO records of Prefect
        self.stream = stream or sys.stderr
        self.on_line = on_line  # the live display prints lines above itself

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.line(record)
            if line is None:
                return
            if self.on_line is not None:
                self.on_line(line)
            else:
                write_line(self.stream, line)
        except Exception:  # a display problem must never fail a run
            self.handleError(record)

    @staticmethod
    def line(record: logging.LogRecord) -> str | None:
        if record.name.startswith("prefect"):
            return _retry_line(record)
        if record.name.startswith("medstack") and record.levelno >= logging.WARNING:
            return f"medstack: {record.levelname.lower()}: {record.getMessage()}"
        return None


def _retry_line(record: logging.LogRecord) -> str | None:
    """``load_dataset failed (download of ... failed: timed out), retrying 1/2 in 5 s`` from Prefect's retry record."""
    if not (isinstance(record.msg, str) and record.msg.startswith("Task run failed with") and "Retry %s/%s" in record.msg):
        return None
    _kind, exc, attempt, total, when = record.args
    task = re.sub(r"-[0-9a-f]{3}$", "", str(getattr(record, "task_run_name", "a task")))  # Prefect's run suffix
    reason = str(exc) if isinstance(exc, BaseException) else repr(exc)
    when = f"in {str(when).replace(' second(s) from now', ' s')}" if "second" in str(when) else "now"
    return f"medstack: {task} failed ({reason}), retrying {attempt}/{total} {when}"


@contextlib.contextmanager
def terminal_logging(verbosity: int, *, debug: bool = False, on_line=None,
                     stream: TextIO | None = None) -> Iterator[None]:
    """The terminal's share of logging while a run goes, undone afterwards (importing prefect configured it).

    ``-v``: Prefect's console lines as Prefect prints them, without tracebacks unless ``debug``. Default:
    Prefect's console handler is silenced and :class:`TerminalLines` prints warnings and retries. ``-q``: errors
    only (they come from the exception, not from logging)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    consoles = {h for logger in _all_loggers() for h in logger.handlers if isinstance(h, PrefectConsoleHandler)}
    saved = {h: (h.level, h.formatter) for h in consoles}
    medstack_logger = logging.getLogger("medstack")
    saved_level = medstack_logger.level
    for handler in consoles:
        if not debug and handler.formatter is not None:
            handler.setFormatter(_NoTraceback(handler.formatter))
        if verbosity < VERBOSE:
            handler.setLevel(logging.CRITICAL + 1)
    medstack_logger.setLevel(logging.INFO if verbosity >= VERBOSE else logging.WARNING)
    lines = TerminalLines(stream, on_line=on_line) if verbosity == NORMAL else None
    if lines is not None:
        for name in ("medstack", "prefect.task_runs"):
            logging.getLogger(name).addHandler(lines)
    try:
        yield
    finally:
        if lines is not None:
            for name in ("medstack", "prefect.task_runs"):
                logging.getLogger(name).removeHandler(lines)
        medstack_logger.setLevel(saved_level)
        for handler, (level, formatter) in saved.items():
            handler.setLevel(level)
            handler.setFormatter(formatter)


@contextlib.contextmanager
def logger_level(name: str, level: int) -> Iterator[None]:
    """Logger ``name`` at ``level`` inside the block, at its own level again afterwards."""
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


def _all_loggers() -> list[logging.Logger]:
    manager = logging.Logger.manager
    found = [logging.getLogger()]
    found += [lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    return found
