"""The fan-out node: one task per (strategy, fold), on the task runner the config asks for, with progress."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.states import Completed, State
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from medstack import pipeline, progress
from medstack.config import RunConfig, RuntimeConfig
from medstack.pipeline import FoldCache, FoldResult
from medstack.pipeline.student import train_student
from medstack.run_folder import STUDENT, training_key
from medstack.tasks.retry import is_transient

PROGRESS_KEY = "ensemble-training-progress"


@task(name="train", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10, retry_condition_fn=is_transient)
def train_fold(prepared: pipeline.PreparedData, cfg: RunConfig, strategy: str, fold: int, version: str,
               events: progress.Publisher | None = None) -> State:
    """Train one base model on folds != fold (or load it from the fold cache) and predict OOF, val and test, or
    (``strategy`` "student") the one-network model on the whole training split;
    ``version`` is :func:`medstack.pipeline.code_version`, computed once by the flow before the fan-out (it parses
    sources, and CPython 3.11's ``ast.parse`` in two threads at once can fail with "AST constructor recursion depth
    mismatch"); ``events`` (the run's publisher, see :func:`training_progress`) hears the start and every epoch.

    A fold served from medstack's fold cache ends in a Completed state named "Cached", so the Prefect UI
    shows at a glance which folds a run retrained."""
    if events is not None:
        events(progress.FoldStarted(strategy, fold))
    cache, on_epoch = FoldCache(cfg.runtime.cache_dir), progress.epoch_reporter(events, strategy, fold)
    if strategy == STUDENT:  # the one-network model: every fold's rows (medstack.pipeline.student)
        result = train_student(prepared, cfg, cache, version, on_epoch=on_epoch)
    else:
        result = pipeline.train_one_fold(prepared, cfg, strategy, fold, cache, version, on_epoch=on_epoch)
    if result.from_cache:
        return Completed(data=result, name="Cached", message=f"fold cache hit {result.cache_key}")
    return Completed(data=result, message=f"trained {result.info.get('epochs_run')} epochs")


def train_all(prepared: pipeline.PreparedData, config: RunConfig, folds: list[tuple[str, int]],
              run_id: str) -> list[FoldResult]:
    """The fan-out: one ``train[<strategy>|fold-<k>]`` task per (strategy, fold) of ``folds`` on the config's runner
    (at most ``runtime.max_workers`` at once, tagged for the GPU concurrency limit), the run's progress stream
    listening; their results in the order of ``folds``. A failed fold raises. Whatever happens, temporaries that a
    worker killed mid-write left in the fold cache are removed at the end (on this host: see
    :meth:`FoldCache.sweep`)."""
    runtime = config.runtime
    version = pipeline.code_version()  # once, here: the trainings' threads must not parse sources at the same time
    try:
        with (shared_api(runtime), training_runner(runtime) as runner, placement(runner, runtime),
              training_progress(runner, runtime, run_id, total=len(folds)) as progress):
            futures = [
                runner.submit(
                    train_fold.with_options(task_run_name=f"train[{training_key(strategy, fold)}]",
                                            tags=[runtime.gpu_tag, strategy]),
                    parameters={"prepared": prepared, "cfg": config, "strategy": strategy, "fold": fold,
                                "version": version, "events": progress.publisher},
                )
                for strategy, fold in folds
            ]
            return wait_for_folds(futures, progress)
    finally:
        FoldCache(runtime.cache_dir).sweep()


def training_runner(runtime: RuntimeConfig) -> TaskRunner:
    """Processes (default: a pool of worker processes, each with its own TensorFlow) or threads of the flow process,
    ``runtime.max_workers`` wide, or a Dask cluster (``runtime.dask``: an existing scheduler, or a temporary local
    cluster of worker processes).

    The flow enters this runner itself rather than fixing one in ``@flow``, so a deployment run honours the
    config's runtime section exactly like ``medstack run`` does."""
    if runtime.task_runner == "dask":
        from medstack.tasks.cluster import dask_runner

        return dask_runner(runtime.dask)
    runner_cls = ProcessPoolTaskRunner if runtime.task_runner == "processes" else ThreadPoolTaskRunner
    return runner_cls(max_workers=runtime.max_workers)


@contextmanager
def shared_api(runtime: RuntimeConfig) -> Iterator[None]:
    """Worker processes report their task runs to the flow's own Prefect API.

    Without ``PREFECT_API_URL`` the flow talks to a temporary server it started, whose address is in no setting:
    worker processes would each start a temporary server of their own (seconds and a few hundred MB apiece, all on
    one database). Inside this block the setting names the flow's server, and the runners hand it to workers."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if runtime.task_runner == "threads" or PREFECT_API_URL.value():
        yield
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        url = str(client.api_url).rstrip("/")
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


def placement(runner: TaskRunner, runtime: RuntimeConfig) -> AbstractContextManager:
    """Where submitted trainings may run: on a Dask cluster with GPU workers, one GPU each (see
    :func:`medstack.tasks.cluster.gpu_annotation`); elsewhere no constraint beyond the runner's width."""
    if runtime.task_runner == "dask":
        from medstack.tasks.cluster import gpu_annotation

        return gpu_annotation(runner, runtime.dask)
    return nullcontext()


def progress_transport(runner: TaskRunner, runtime: RuntimeConfig, run_id: str) -> progress.Transport:
    """How the trainings' events reach the flow under this runner (see :mod:`medstack.progress`)."""
    if runtime.task_runner == "dask":
        return progress.DaskTopic(runner.client, f"medstack-progress-{run_id}")
    if runtime.task_runner == "processes":
        return progress.ManagerQueue()
    return progress.InProcessQueue()


@contextmanager
def training_progress(runner: TaskRunner, runtime: RuntimeConfig, run_id: str,
                      total: int) -> Iterator[progress.ProgressStream]:
    """The run's progress stream over the runner's transport, with the Prefect progress artifact listening;
    ``total`` fold trainings are announced. Every event published inside has reached the listeners on leaving."""
    with progress.ProgressStream(progress_transport(runner, runtime, run_id), (TrainingProgress(total),)) as stream:
        stream.publish(progress.FoldsPlanned(total))
        yield stream


def wait_for_folds(futures: list[PrefectFuture], stream: progress.ProgressStream) -> list[FoldResult]:
    """Results in submission order; a ``FoldFinished`` event for every completion, in whatever order they finish.
    A failed fold raises."""
    for done, future in enumerate(as_completed(futures), start=1):
        result: FoldResult = future.result()
        stream.publish(progress.FoldFinished(result.strategy, result.fold, result.from_cache,
                                             result.info.get("seconds"), done, len(futures)))
    return [future.result() for future in futures]


class TrainingProgress:
    """A Prefect progress artifact that advances as fold trainings finish: a listener of the run's
    :class:`~medstack.progress.FoldFinished` events (created here, in the flow; updated on the dispatch thread)."""

    def __init__(self, total: int):
        self.total = total
        self.done = self.cached = 0
        self._artifact = create_progress_artifact(
            progress=0.0, key=PROGRESS_KEY, description=self._describe()
        )

    def _describe(self) -> str:
        return f"{self.done}/{self.total} fold trainings finished ({self.cached} from the fold cache)"

    def __call__(self, event: progress.Event) -> None:
        if not isinstance(event, progress.FoldFinished):
            return
        self.done = event.done
        self.cached += event.from_cache
        update_progress_artifact(self._artifact, progress=100.0 * self.done / self.total, description=self._describe())
