"""Live progress of ``medstack run``: folds trained / from cache / total, the folds in training with their epoch,
elapsed time and an estimate of the time left. Plain lines, one per finished fold, when stdout is not a terminal.

:class:`RunProgress` is a listener of the run's progress events (:mod:`medstack.progress`): ``medstack run`` attaches
it with ``progress.listening`` around the flow. Epochs arrive under every task runner (threads, processes, Dask).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from medstack.console.quiet import write_line
from medstack.progress import EpochEnded, Event, FoldFinished, FoldsPlanned, FoldStarted
from medstack.run_folder import training_label

if TYPE_CHECKING:
    from medstack.config import RuntimeConfig


@dataclass
class _Fold:
    started: float
    epoch: int | None = None
    epochs: int | None = None


@dataclass
class ProgressState:
    """What the display shows; fed by :class:`RunProgress`'s events, read by the renderers."""

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
        lines.append(f"  training {training_label(strategy, fold)}{epoch} ({clock(now - info.started)})")
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


class RunProgress:
    """A progress listener that keeps :class:`ProgressState` and shows it: live (rich) or as plain lines. As a
    context manager it starts and stops the live display."""

    def __init__(self, workers: int | None, *, live: bool, stream: TextIO | None = None, where: str | None = None):
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
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()

    # -- events --------------------------------------------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        """Takes one event (on the run's dispatch thread); a plain line when a fold finishes or the plan is known."""
        with self._lock:
            line = self.apply(event)
        if line and self._live is None:
            write_line(self.stream, line)

    def apply(self, event: Event) -> str | None:
        """The state after ``event``, and the plain line it prints, if any."""
        now, state = time.monotonic(), self.state
        if isinstance(event, FoldsPlanned):
            state.total = event.total
            return f"training {state.total} models ({self.where})"
        key = (event.strategy, event.fold) if isinstance(event, (FoldStarted, EpochEnded, FoldFinished)) else None
        if isinstance(event, FoldStarted):
            state.running.setdefault(key, _Fold(started=now))
        elif isinstance(event, EpochEnded):
            info = state.running.get(key)  # a fold not (or no longer) in training shows no epoch
            if info is not None:
                info.epoch, info.epochs = event.epoch, event.epochs
        elif isinstance(event, FoldFinished):
            return self._finished(key, event, now)
        return None

    def _finished(self, key: tuple[str, int], event: FoldFinished, now: float) -> str:
        state = self.state
        info = state.running.pop(key, None)
        if event.from_cache:
            state.cached += 1
            how = "from the fold cache"
        else:
            state.trained += 1
            seconds = event.seconds or (now - info.started if info else None)
            if seconds:
                state.trained_seconds.append(float(seconds))
            how = f"trained in {seconds:.1f} s" if seconds else "trained"
        return f"[{state.done}/{state.total}] {training_label(*key)} {how}"
