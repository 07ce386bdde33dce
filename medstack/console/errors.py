"""An exception -> a few lines a person can act on, and the exit code: 2 for bad input or config, 1 for a failed run.

The message of every medstack error already names the file, key or class; its type (a :class:`MedstackError`
subclass, :mod:`medstack.errors`) gives the exit code, the kind and the one line of what to do. Tracebacks are for
``--debug`` (or ``MEDSTACK_DEBUG=1``); the Prefect flow run keeps the full traceback in its own logs either way.
"""

from __future__ import annotations

import os
import sys
import traceback
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TextIO

from medstack.errors import BAD_INPUT, RUN_FAILED, MedstackError


@dataclass(frozen=True)
class Verdict:
    """How one error reaches the terminal."""

    code: int
    kind: str | None  # "config error", "data error", ...; None: the message alone, one line
    hint: str | None


def debug_enabled(flag: bool = False) -> bool:
    return flag or os.environ.get("MEDSTACK_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def judge(exc: BaseException) -> Verdict:
    """Exit code, kind and what-to-do line of ``exc``, by its type: a :class:`MedstackError` says all three itself."""
    if isinstance(exc, MedstackError):
        return Verdict(exc.exit_code, exc.kind, exc.hint)
    if isinstance(exc, KeyboardInterrupt):
        return Verdict(130, "interrupted", "nothing half-written is left: a run folder appears only when complete")
    if isinstance(exc, MemoryError):
        return Verdict(RUN_FAILED, "out of memory",
                       "lower training.batch_size or runtime.max_workers, or train on data.subset")
    if isinstance(exc, BrokenProcessPool):  # the processes runner: a worker died mid-task (most often the OOM killer)
        return Verdict(RUN_FAILED, "a training process died",
                       "something killed it, most often the system when memory ran out: lower runtime.max_workers "
                       "or training.batch_size, or set runtime.task_runner: threads (one TensorFlow in memory); run "
                       "again and the folds that finished come from the cache")
    # Prefect raises a plain RuntimeError when its ephemeral server does not start: no type to tell it by, so its
    # text picks the kind and hint only; the exit code is RUN_FAILED either way, as for any other RuntimeError.
    if isinstance(exc, RuntimeError) and "ephemeral Prefect API server" in str(exc):
        return Verdict(RUN_FAILED, "Prefect's temporary server did not start",
                       "the machine is busy: raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or start one "
                       "server (`prefect server start`) and set PREFECT_API_URL=http://127.0.0.1:4200/api")
    return Verdict(RUN_FAILED, f"run failed ({type(exc).__name__})",
                   "this looks like a bug in medstack: run again with --debug and report the traceback")


def describe(exc: BaseException) -> list[str]:
    """The message of ``exc`` as lines; a pydantic validation error as one ``key: problem`` line per error."""
    cause = exc.__cause__
    errors = getattr(cause, "errors", None)
    if callable(errors) and type(cause).__name__ == "ValidationError":
        head = str(exc).splitlines()[0]
        lines = [head.rstrip(":") + ":"]
        for err in errors():
            key = ".".join(str(part) for part in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            value = err.get("input")
            got = f" (got {value!r})" if isinstance(value, (str, int, float, bool)) and err["type"] != "missing" else ""
            lines.append(f"  {key}: {msg}{got}")
        return lines
    message = str(exc).strip() or type(exc).__name__
    first, *rest = message.splitlines()
    return [first, *(f"  {line}" for line in rest)]


def report(exc: BaseException, *, debug: bool = False, stream: TextIO | None = None) -> int:
    """Print ``exc`` as ``medstack: <kind>: <message>`` plus its hint; the traceback too with ``debug``. An error
    without a kind (a command's start-up error, whose message names the file or flag and what to do) is the one line
    ``medstack: <message>``."""
    stream = stream or sys.stderr
    verdict = judge(exc)
    if debug:
        traceback.print_exception(exc, file=stream)
    first, *rest = describe(exc)
    lines = [f"medstack: {first}" if verdict.kind is None else f"medstack: {verdict.kind}: {first}", *rest]
    if verdict.hint:
        lines.append(f"  -> {verdict.hint}")
    if not debug and verdict.kind is not None:
        lines.append("  (--debug shows the traceback)")
    print("\n".join(lines), file=stream, flush=True)
    return verdict.code
