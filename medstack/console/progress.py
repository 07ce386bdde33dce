"""Live progress of ``medstack run``: folds trained / from cache / total, the folds in training with their epoch,
elapsed time and an estimate of the time left. Plain lines, one per finished fold, when stdout is not a terminal.

It listens to logging only (same process, threads runner): fold events from ``medstack.tasks.training``
(``medstack_fold``) and, when the training code sends them, per-epoch records from ``medstack.models.training``
(``medstack_epoch``). Without epoch records the folds in training show without an epoch; with the processes
runner, only finished folds arrive (the flow process sees those).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from medstack.console.quiet import write_line

if TYPE_CHECKING:
    from medstack.config import RuntimeConfig

FOLD_LOGGER = "medstack.tasks.training"
EPOCH_LOGGER = "medstack.models.training"


@dataclass
class _Fold:
    started: float
    epoch: int | None = None
    epochs: int | None = None


@dataclass
class ProgressState:
    """What the display shows; fed by :meth:`RunProgress.emit`, read by the renderers."""

    workers: int | None  # trainings at once; None: unknown (a Dask cluster's workers come and go)
    started: float = field(default_factory=time.monotonic)
    total: int | None = None
    trained: int = 0
    cached: int = 0
    running: dict[tuple[str, int], _Fold] = field(default_factory=dict)
    trained_seconds: list[float] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.trained + self.cached

    def seconds_left(self, now: float) -> float | None:
        """Folds left x the mean time of a trained fold (or of the folds in training, from their epochs), spread
        over the workers. None until there is anything to go by."""
        if self.total is None:
            return None
        per_fold = None
        if self.trained_seconds:
            per_fold = sum(self.trained_seconds) / len(self.trained_seconds)
        else:
            guesses = [(now - f.started) * f.epochs / f.epoch for f in self.running.values() if f.epoch and f.epochs]
            if guesses:
                per_fold = sum(guesses) / len(guesses)
        if per_fold is None:
            return None
        waiting = max(0, self.total - self.done - len(self.running))
        in_flight = sum(max(0.0, per_fold - (now - f.started)) for f in self.running.values())
        width = self.workers or max(1, len(self.running))
        return (waiting * per_fold + in_flight) / max(1, min(width, self.total - self.done or 1))


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def summary_line(state: ProgressState, now: float) -> str:
    if state.total is None:
        return f"starting: Prefect, data, splits and folds ... {clock(now - state.started)} elapsed"
    left = state.seconds_left(now)
    eta = "estimating time left" if left is None else f"about {clock(left)} left"
    if state.done == state.total:
        eta = "folds done; ensembles, test metrics and report to go"
    return (f"folds {state.done}/{state.total} ({state.trained} trained, {state.cached} cached), "
            f"{clock(now - state.started)} elapsed, {eta}")


def fold_lines(state: ProgressState, now: float) -> list[str]:
    lines = []
    for (strategy, fold), info in sorted(state.running.items()):
        epoch = f", epoch {info.epoch}/{info.epochs}" if info.epoch else ""
        lines.append(f"  training {strategy} fold {fold + 1}{epoch} ({clock(now - info.started)})")
    return lines


def parallelism(runtime: RuntimeConfig) -> tuple[int | None, str]:
    """How many trainings run at once under ``runtime`` (None: up to the cluster) and how to say it."""
    if runtime.task_runner == "dask":
        if runtime.dask.address:
            return None, f"on the Dask cluster at {runtime.dask.address}"
        width = runtime.dask.n_workers * runtime.dask.threads_per_worker
        return width, f"{width} at a time, on a temporary local Dask cluster"
    if runtime.task_runner == "processes":
        return runtime.max_workers, f"{runtime.max_workers} at a time, one process each"
    return runtime.max_workers, f"{runtime.max_workers} at a time"


class RunProgress(logging.Handler):
    """A logging handler that keeps :class:`ProgressState` and shows it: live (rich) or as plain lines."""

    def __init__(self, workers: int | None, *, live: bool, stream: TextIO | None = None, where: str | None = None):
        super().__init__(logging.DEBUG)
        self.state = ProgressState(workers=workers)
        self.where = where or f"{workers} at a time"
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._live = None
        if live:
            from rich.console import Console
            from rich.live import Live

            self._console = Console(file=self.stream)
            self._live = Live(get_renderable=self._render, console=self._console, refresh_per_second=4,
                              transient=True, redirect_stdout=False, redirect_stderr=False)

    # -- display -------------------------------------------------------------------------------------------------
    def _render(self):
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        now = time.monotonic()
        with self._lock:
            head = summary_line(self.state, now)
            folds = fold_lines(self.state, now)
            total, done = self.state.total, self.state.done
        grid = Table.grid(padding=(0, 1))
        grid.add_row(ProgressBar(total=total or 1, completed=done if total else 0, width=20), Text(head))
        for line in folds:
            grid.add_row("", Text(line.strip(), style="dim"))
        return grid

    def print_line(self, line: str) -> None:
        """A line above the live display (warnings, retries), or a plain line."""
        if self._live is not None and self._live.is_started:
            self._console.print(line, markup=False, highlight=False)
        else:
            write_line(self.stream, line)

    def __enter__(self) -> "RunProgress":
        for name in (FOLD_LOGGER, EPOCH_LOGGER):
            logger = logging.getLogger(name)
            logger.setLevel(logging.DEBUG)
            logger.addHandler(self)
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()
        for name in (FOLD_LOGGER, EPOCH_LOGGER):
            logging.getLogger(name).removeHandler(self)

    # -- events --------------------------------------------------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        try:
            fold_event = getattr(record, "medstack_fold", None)
            epoch_event = getattr(record, "medstack_epoch", None)
            with self._lock:
                line = self._fold(fold_event) if fold_event else None
                if epoch_event:
                    self._epoch(epoch_event)
            if line and self._live is None:
                write_line(self.stream, line)
        except Exception:  # a display problem must never fail a run
            self.handleError(record)

    def _fold(self, event: dict) -> str | None:
        now, state, kind = time.monotonic(), self.state, event.get("event")
        if kind == "planned":
            state.total = int(event["total"])
            return f"training {state.total} fold models ({self.where})"
        key = (str(event.get("strategy")), int(event.get("fold", -1)))
        if kind == "started":
            state.running.setdefault(key, _Fold(started=now))
            return None
        if kind != "finished":
            return None
        info = state.running.pop(key, None)
        if event.get("from_cache"):
            state.cached += 1
            how = "from the fold cache"
        else:
            state.trained += 1
            seconds = event.get("seconds") or (now - info.started if info else None)
            if seconds:
                state.trained_seconds.append(float(seconds))
            how = f"trained in {seconds:.1f} s" if seconds else "trained"
        return f"[{state.done}/{state.total}] {key[0]} fold {key[1] + 1} {how}"

    def _epoch(self, event: dict) -> None:
        # Same fold numbering as the fold events (0-based index); an unknown fold shows no epoch rather than a wrong one.
        info = self.state.running.get((str(event.get("strategy")), event.get("fold")))
        if info is not None:
            info.epoch, info.epochs = event.get("epoch"), event.get("epochs")
