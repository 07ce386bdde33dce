"""The progress event stream (medstack.progress) without Prefect or TensorFlow: events, ordering, listeners that fail,
listeners that leave, and the processes runner's transport across spawned processes."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor

import pytest

from medstack import progress
from medstack.progress import EpochEnded, FoldFinished, FoldsPlanned, FoldStarted

EVENTS = [
    FoldsPlanned(4),
    FoldStarted("ldam", 0),
    EpochEnded("ldam", 0, 2, 6, {"loss": 0.5, "val_auc": 0.75}),
    FoldFinished("ldam", 0, False, 12.5, 1, 4),
    FoldFinished("smote", 1, True, None, 2, 4),
]


class Recorder:
    """A listener that keeps what it heard and the thread it heard it on."""

    def __init__(self):
        self.events, self.threads = [], set()

    def __call__(self, event):
        self.events.append(event)
        self.threads.add(threading.current_thread().name)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_events_are_frozen_and_cross_a_process_as_pickles_or_plain_messages(event):
    import msgpack  # what Dask's scheduler carries messages in

    assert pickle.loads(pickle.dumps(event)) == event
    assert progress.from_message(msgpack.unpackb(msgpack.packb(progress.to_message(event)))) == event
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.total = 0


def test_worker_events_say_where_they_were_made():
    started = FoldStarted("ldam", 1)
    assert started.pid == os.getpid() and started.host
    heard = Recorder()
    progress.epoch_reporter(heard, "ldam", 1)(3, 6, {"loss": 0.25})
    assert heard.events == [EpochEnded("ldam", 1, 3, 6, {"loss": 0.25})] and heard.events[0].pid == os.getpid()
    assert progress.epoch_reporter(None, "ldam", 1) is None


def test_every_producer_is_heard_in_its_order_on_one_dispatch_thread():
    heard = Recorder()
    with progress.ProgressStream(progress.InProcessQueue(), (heard,)) as stream:
        def produce(fold: int) -> None:
            for epoch in range(1, 51):
                stream.publisher(EpochEnded("ldam", fold, epoch, 50))

        producers = [threading.Thread(target=produce, args=(fold,)) for fold in range(4)]
        for thread in producers:
            thread.start()
        for thread in producers:
            thread.join()
        stream.publish(FoldsPlanned(4))
    # Everything published inside was delivered on leaving, each producer's events in the order it made them.
    assert len(heard.events) == 201 and heard.events[-1] == FoldsPlanned(4)
    for fold in range(4):
        assert [e.epoch for e in heard.events if getattr(e, "fold", None) == fold] == list(range(1, 51))
    assert heard.threads == {"medstack-progress"}


def test_a_failing_listener_is_logged_once_and_the_others_hear_everything(caplog):
    def broken(event):
        raise RuntimeError("display gone")

    heard = Recorder()
    with caplog.at_level(logging.WARNING, logger="medstack.progress"):
        with progress.ProgressStream(progress.InProcessQueue(), (broken, heard)) as stream:
            for event in EVENTS:
                stream.publish(event)
    assert heard.events == EVENTS
    failures = [r for r in caplog.records if r.name == "medstack.progress"]
    assert len(failures) == 1 and "failed on FoldsPlanned(total=4)" in failures[0].getMessage()


class BrokenTransport(progress.InProcessQueue):
    """A transport whose flow side fails (as a Dask scheduler out of reach would)."""

    name = "broken transport"

    def publish(self, event):
        raise ConnectionError("scheduler gone")

    def close(self):
        raise ConnectionError("scheduler gone")


def test_a_failing_transport_loses_events_not_the_run(caplog):
    heard = Recorder()
    with caplog.at_level(logging.WARNING, logger="medstack.progress"):
        with progress.ProgressStream(BrokenTransport(), (heard,)) as stream:
            stream.publish(FoldsPlanned(2))
            stream.publish(FoldsPlanned(2))
            stream.publisher(FoldStarted("ldam", 0))  # the workers' side still works
    assert heard.events == [FoldStarted("ldam", 0)]
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["progress event FoldsPlanned(total=2) was lost"]


def test_a_process_listener_hears_runs_only_while_it_listens():
    heard = Recorder()
    with pytest.raises(KeyError):
        with progress.listening(heard):
            with progress.ProgressStream(progress.InProcessQueue()) as stream:
                stream.publish(FoldsPlanned(2))
            raise KeyError("the flow failed")
    with progress.ProgressStream(progress.InProcessQueue()) as stream:
        stream.publish(FoldsPlanned(3))
    assert heard.events == [FoldsPlanned(2)]  # the listener left with its block, even on an exception


def _publish_epochs(publisher, fold: int) -> int:
    """Runs in a spawned pool worker: what a training task does with the publisher its parameters carried."""
    on_epoch = progress.epoch_reporter(publisher, "smote", fold)
    for epoch in range(1, 21):
        on_epoch(epoch, 20, {"loss": 1.0 / epoch})
    return os.getpid()


def test_the_manager_queue_carries_events_from_spawned_processes_in_order():
    import cloudpickle  # Prefect's process pool pickles task parameters with it

    heard = Recorder()
    with progress.ProgressStream(progress.ManagerQueue(), (heard,)) as stream:
        publisher = cloudpickle.loads(cloudpickle.dumps(stream.publisher))
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            pids = set(pool.map(_publish_epochs, [publisher, publisher], [0, 1]))
        stream.publish(FoldFinished("smote", 1, False, 1.0, 1, 2))
    assert os.getpid() not in pids
    for fold in (0, 1):
        epochs = [e for e in heard.events if isinstance(e, EpochEnded) and e.fold == fold]
        assert [e.epoch for e in epochs] == list(range(1, 21)) and {e.pid for e in epochs} <= pids
    assert {e.pid for e in heard.events if isinstance(e, EpochEnded)} == pids
    assert heard.events[-1] == FoldFinished("smote", 1, False, 1.0, 1, 2)  # the flow's own event, behind the workers'


def test_a_dask_topic_delivers_every_worker_event_before_the_flow_event_behind_it():
    """Dask's structured events through a scheduler (an in-process cluster here; tests/test_cluster.py has worker
    processes): per-worker order, and the flow's events published after a result come after that task's events."""
    distributed = pytest.importorskip("distributed")

    heard = Recorder()
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None)
    with cluster, distributed.Client(cluster, set_as_default=False) as client:
        with progress.ProgressStream(progress.DaskTopic(client, "medstack-progress-test"), (heard,)) as stream:
            futures = {client.submit(_publish_epochs, stream.publisher, fold, pure=False): fold for fold in (0, 1)}
            for future in distributed.as_completed(futures, loop=client.loop):
                future.result()
                stream.publish(FoldFinished("smote", futures[future], False, 1.0, 1, 2))
    for fold in (0, 1):
        mine = [e for e in heard.events if e.fold == fold]
        assert [getattr(e, "epoch", None) for e in mine] == [*range(1, 21), None]  # FoldFinished last
