"""Quiet by default: no TensorFlow C++ start-up lines, no Prefect chatter; ``-v`` brings Prefect's logs back.

What a person still sees by default: medstack's own warnings (one line each) and one line per retry of a
transient failure. Prefect's API log handler is left alone, so a flow run keeps its full logs, tracebacks
included, whatever the terminal shows.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
from typing import Iterator, TextIO

QUIET, NORMAL, VERBOSE = -1, 0, 1


def quiet_environment() -> None:
    """Environment set before TensorFlow or Prefect is imported (a user's own settings win)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # 3 = errors only: hides the oneDNN notice, "Could not find cuda drivers" and friends, which TF prints from C++
    # at import time, before any Python logging could filter them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
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
def filtered_stderr(noise: tuple[str, ...] = TF_STARTUP_NOISE) -> Iterator[None]:
    """File descriptor 2 (C++ writes included) goes to a temporary file; afterwards every line without a
    ``noise`` fragment is written to stderr, so nothing but the noise is lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not any(fragment in line for fragment in noise)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow now, with its C++ start-up lines dropped (later imports reuse the module)."""
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    with filtered_stderr():
        import tensorflow  # noqa: F401


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


def _not_progress(record: logging.LogRecord) -> bool:
    return not (hasattr(record, "medstack_epoch") or hasattr(record, "medstack_fold"))


class TerminalLines(logging.Handler):
    """One plain line per medstack warning and per retry; nothing else (default and ``-q`` modes)."""

    def __init__(self, stream: TextIO | None = None, *, on_line=None):
        super().__init__(logging.DEBUG)  # line() picks the records; retries are INFO records of Prefect
        self.stream = stream
        self.on_line = on_line  # the live display prints lines above itself

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.line(record)
            if line is None:
                return
            if self.on_line is not None:
                self.on_line(line)
            else:
                print(line, file=self.stream or sys.stderr, flush=True)
        except Exception:  # a display problem must never fail a run
            self.handleError(record)

    @staticmethod
    def line(record: logging.LogRecord) -> str | None:
        if record.name.startswith("prefect"):
            return _retry_line(record)
        if record.name.startswith("medstack") and record.levelno >= logging.WARNING and _not_progress(record):
            return f"medstack: {record.levelname.lower()}: {record.getMessage()}"
        return None


def _retry_line(record: logging.LogRecord) -> str | None:
    """``load_dataset failed (download of ... failed: timed out), retrying 1/2 in 5 s`` from Prefect's retry record."""
    if not (isinstance(record.msg, str) and record.msg.startswith("Task run failed with") and "Retry %s/%s" in record.msg):
        return None
    _kind, exc, attempt, total, when = record.args
    task = str(getattr(record, "task_run_name", "a task")).rsplit("-", 1)[0]
    reason = str(exc) if isinstance(exc, BaseException) else repr(exc)
    when = f"in {str(when).replace(' second(s) from now', ' s')}" if "second" in str(when) else "now"
    return f"medstack: {task} failed ({reason}), retrying {attempt}/{total} {when}"


def configure_logging(verbosity: int, *, debug: bool = False, on_line=None) -> TerminalLines | None:
    """Set the terminal's share of logging after Prefect configured its own (importing prefect does that).

    ``-v``: Prefect's console lines as Prefect prints them, without tracebacks unless ``debug``. Otherwise
    Prefect's console handler is silenced and :class:`TerminalLines` prints what a person needs."""
    from prefect.logging.handlers import PrefectConsoleHandler

    consoles = {h for logger in _all_loggers() for h in logger.handlers if isinstance(h, PrefectConsoleHandler)}
    for handler in consoles:
        handler.addFilter(_not_progress)
        if not debug and not isinstance(handler.formatter, _NoTraceback) and handler.formatter is not None:
            handler.setFormatter(_NoTraceback(handler.formatter))
        if verbosity < VERBOSE:
            handler.setLevel(logging.CRITICAL + 1)
    logging.getLogger("medstack").setLevel(logging.INFO if verbosity >= VERBOSE else logging.WARNING)
    if verbosity >= VERBOSE:
        return None
    lines = TerminalLines(on_line=on_line)
    for name in ("medstack", "prefect.task_runs"):
        logging.getLogger(name).addHandler(lines)
    return lines


def remove_handler(handler: logging.Handler | None) -> None:
    if handler is None:
        return
    for name in ("medstack", "prefect.task_runs"):
        logging.getLogger(name).removeHandler(handler)


def _all_loggers() -> list[logging.Logger]:
    manager = logging.Logger.manager
    found = [logging.getLogger()]
    found += [lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    return found
