"""An exception -> a few lines a person can act on, and the exit code: 2 for bad input or config, 1 for a failed run.

The message of every medstack error already names the file, key or class; this module adds the one line of what
to do, by error type. Tracebacks are for ``--debug`` (or ``MEDSTACK_DEBUG=1``); the Prefect flow run keeps the full
traceback in its own logs either way.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from typing import TextIO

BAD_INPUT = 2
RUN_FAILED = 1


@dataclass(frozen=True)
class Verdict:
    """How one error reaches the terminal."""

    code: int
    kind: str  # "config error", "data error", ...
    hint: str | None


def debug_enabled(flag: bool = False) -> bool:
    return flag or os.environ.get("MEDSTACK_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _is(exc: BaseException, qualified: str) -> bool:
    """``isinstance`` by qualified class name, so judging a config error never imports the data or output stack."""
    return any(f"{cls.__module__}.{cls.__qualname__}" == qualified for cls in type(exc).__mro__)


def judge(exc: BaseException) -> Verdict:
    """Exit code, kind and what-to-do line of ``exc``, by its type."""
    text = str(exc)
    if _is(exc, "medstack.config.ConfigError"):
        validation = type(exc.__cause__).__name__ == "ValidationError"
        return Verdict(BAD_INPUT, "config error", "fix the key(s) named above; `medstack check-config --config "
                       "FILE` checks a config without training" if validation else None)
    if _is(exc, "medstack.data.dataset.DataError"):
        if text.startswith("download of"):
            return Verdict(RUN_FAILED, "download failed",
                           "try again, or download the file yourself and pass it with --data FILE.npz")
        return Verdict(BAD_INPUT, "data error", "fix the data (or the data.* keys of the config) and run again")
    if _is(exc, "medstack.splits.SplitError"):
        return Verdict(BAD_INPUT, "split error",
                       "add images of the class named above, or lower split.folds / change split.fractions")
    if _is(exc, "medstack.outputs.OutputError"):
        return Verdict(BAD_INPUT, "output error",
                       "choose a writable folder: --output-dir DIR (run folders) or --cache-dir DIR (fold cache)")
    if isinstance(exc, OSError) and text.startswith("download of"):
        return Verdict(RUN_FAILED, "download failed",
                       "check the network and try again, or download the file yourself and pass --data FILE.npz")
    if isinstance(exc, ValueError) and text.startswith("SMOTE needs"):
        return Verdict(BAD_INPUT, "data error",
                       "a fold's training part holds a single image of a class: add images, lower split.folds, "
                       "or leave out the smote strategy")
    if isinstance(exc, RuntimeError) and "ephemeral Prefect API server" in text:
        return Verdict(RUN_FAILED, "Prefect's temporary server did not start",
                       "the machine is busy: raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or start one "
                       "server (`prefect server start`) and set PREFECT_API_URL=http://127.0.0.1:4200/api")
    if isinstance(exc, KeyboardInterrupt):
        return Verdict(130, "interrupted", "nothing half-written is left: a run folder appears only when complete")
    if isinstance(exc, MemoryError):
        return Verdict(RUN_FAILED, "out of memory",
                       "lower training.batch_size or runtime.max_workers, or train on data.subset")
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
    """Print ``exc`` as ``medstack: <kind>: <message>`` plus its hint; the traceback too with ``debug``."""
    stream = stream or sys.stderr
    verdict = judge(exc)
    if debug:
        traceback.print_exception(exc, file=stream)
    first, *rest = describe(exc)
    lines = [f"medstack: {verdict.kind}: {first}", *rest]
    if verdict.hint:
        lines.append(f"  -> {verdict.hint}")
    if not debug:
        lines.append("  (--debug shows the traceback)")
    print("\n".join(lines), file=stream, flush=True)
    return verdict.code
