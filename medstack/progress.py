"""A run's progress as typed events, and how they reach the flow process from wherever the trainings run.

Producers (the flow, and the training tasks in threads, processes or Dask workers) call a *publisher*, a plain
picklable callable that task parameters carry; listeners in the flow process (the terminal display, the Prefect
progress artifact) hear every event on one dispatch thread, in the order each producer published them. The transport
between the two is named by the runner:

- threads: :class:`InProcessQueue`, the dispatch queue itself (same process: nothing to cross);
- processes: :class:`ManagerQueue`, a ``multiprocessing`` manager's queue. Its proxy pickles into the spawned pool
  workers with the task parameters (Prefect's process pool pickles them with cloudpickle); a plain
  ``multiprocessing.Queue`` can only be inherited when a process starts (through a worker global);
- dask: :class:`DaskTopic`, Dask's structured events (``Worker.log_event`` / ``Client.subscribe_topic``) under a
  topic named after the run. Workers may sit on other hosts and only the scheduler connects them to the flow; it
  relays a worker's events ahead of the task results that follow them.

The flow's own events go through the same transport, so a fold's ``FoldFinished`` never overtakes its epochs. A
listener that raises is logged once and the run goes on. No TensorFlow, Prefect or Dask import here at module level.
"""

from __future__ import annotations

import contextvars
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Union

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldsPlanned:
    """The flow is about to submit ``total`` fold trainings."""

    total: int


@dataclass(frozen=True)
class FoldStarted:
    """A training task began (a fold served from the fold cache starts too); ``fold`` is 0-based, as in the code."""

    strategy: str
    fold: int
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)


@dataclass(frozen=True)
class EpochEnded:
    """``epoch`` (1-based) of ``epochs`` planned is done; ``metrics`` are Keras' logs of that epoch (``loss``,
    ``val_loss``, ``val_auc``, ...), as floats."""

    strategy: str
    fold: int
    epoch: int
    epochs: int
    metrics: dict[str, float] = field(default_factory=dict)
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)


@dataclass(frozen=True)
class FoldFinished:
    """The flow received a fold's result: ``done`` of ``total`` trainings are finished."""

    strategy: str
    fold: int
    from_cache: bool
    seconds: float | None
    done: int
    total: int


Event = Union[FoldsPlanned, FoldStarted, EpochEnded, FoldFinished]
Listener = Callable[[Event], None]
Publisher = Callable[[Event], None]
EVENTS: dict[str, type] = {cls.__name__: cls for cls in (FoldsPlanned, FoldStarted, EpochEnded, FoldFinished)}
_MARK = "_mark"  # a transport's own message (end of stream, round trip), never delivered


def to_message(event: Event) -> dict[str, Any]:
    """The event as plain values (what crosses a process: msgpack and pickle both carry it; no medstack import)."""
    return {"event": type(event).__name__, **asdict(event)}


def from_message(message: dict[str, Any]) -> Event:
    """The event back; keys a transport added on the way (Dask's scheduler adds ``worker``) are dropped."""
    cls = EVENTS[message["event"]]
    return cls(**{f.name: message[f.name] for f in fields(cls) if f.name in message})


def epoch_reporter(publish: Publisher | None, strategy: str, fold: int) -> Callable[[int, int, dict], None] | None:
    """The plain ``on_epoch(epoch, epochs, metrics)`` a model calls, publishing :class:`EpochEnded` for this fold."""
    if publish is None:
        return None

    def on_epoch(epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        publish(EpochEnded(strategy, fold, epoch, epochs, metrics))

    return on_epoch


# -- listeners ------------------------------------------------------------------------------------------------------
_process_listeners: list[Listener] = []  # this process's listeners, beside each run's own (see listening)
_process_lock = threading.Lock()


@contextmanager
def listening(listener: Listener) -> Iterator[Listener]:
    """Within: ``listener`` hears the events of every run this process holds (``medstack run``'s display)."""
    with _process_lock:
        _process_listeners.append(listener)
    try:
        yield listener
    finally:
        with _process_lock:
            _process_listeners.remove(listener)


# -- transports -----------------------------------------------------------------------------------------------------
class Transport:
    """Brings events to ``deliver`` in the flow process: ``publisher`` (once opened) is what tasks are given,
    :meth:`publish` the flow's own way in, and :meth:`close` returns once every event published before is delivered."""

    name = "transport"
    publisher: Publisher

    def open(self, deliver: Callable[[Event], None]) -> None:
        raise NotImplementedError

    def publish(self, event: Event) -> None:
        self.publisher(event)

    def close(self) -> None:
        pass


class _Guarded:
    """A cross-process publisher: a transport failure is logged once and never fails the training that publishes."""

    _failed = False

    def __call__(self, event: Event) -> None:
        try:
            self.send(to_message(event))
        except Exception:
            if not self._failed:
                self._failed = True
                log.warning("progress events from this worker are lost (%s)", self, exc_info=True)


class InProcessQueue(Transport):
    """Threads runner: producers put events straight on the dispatch queue."""

    name = "in-process queue"

    def open(self, deliver: Callable[[Event], None]) -> None:
        self.publisher = deliver


class QueuePublisher(_Guarded):
    def __init__(self, proxy: Any):
        self.proxy = proxy

    def send(self, message: dict[str, Any]) -> None:
        self.proxy.put(message)

    def __repr__(self) -> str:
        return "a multiprocessing manager queue"


class ManagerQueue(Transport):
    """Processes runner: a queue served by a manager process (spawned, as Prefect's pool workers are) and read by a
    forwarding thread here; each worker's puts arrive in the order it made them."""

    name = "multiprocessing manager queue"

    def open(self, deliver: Callable[[Event], None]) -> None:
        import multiprocessing
        from multiprocessing.managers import SyncManager

        self._manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
        self._manager.start(_exit_with_parent, (os.getpid(),))
        self.publisher = QueuePublisher(self._manager.Queue())
        self._forwarder = threading.Thread(target=self._forward, args=(self.publisher.proxy, deliver),
                                           name="medstack-progress-queue", daemon=True)
        self._forwarder.start()

    @staticmethod
    def _forward(proxy: Any, deliver: Callable[[Event], None]) -> None:
        while True:
            try:
                message = proxy.get()
            except (EOFError, OSError):  # the manager is gone
                return
            if message.get("event") == _MARK:
                return
            deliver(from_message(message))

    def close(self) -> None:
        try:
            self.publisher.proxy.put({"event": _MARK})
            self._forwarder.join(timeout=30)
        finally:
            self._manager.shutdown()


def _exit_with_parent(parent: int) -> None:
    """In the manager process: leave when the flow process is gone (killed, it could not shut the manager down)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="medstack-progress-watch", daemon=True).start()


class DaskPublisher(_Guarded):
    def __init__(self, topic: str):
        self.topic = topic

    def send(self, message: dict[str, Any]) -> None:
        from distributed import get_worker

        get_worker().log_event(self.topic, message)

    def __repr__(self) -> str:
        return f"Dask topic {self.topic}"


class DaskTopic(Transport):
    """Dask runner: workers log events under ``topic`` (one per run); the scheduler relays them to this client's
    subscription, on the client's event loop. The flow publishes under the same topic through the scheduler."""

    name = "Dask events"

    def __init__(self, client: Any, topic: str):
        self.client, self.topic = client, topic
        self.publisher = DaskPublisher(topic)
        self._marks: queue.SimpleQueue[str] = queue.SimpleQueue()

    def open(self, deliver: Callable[[Event], None]) -> None:
        def handle(event: tuple[float, dict]) -> None:  # (scheduler time, message)
            message = event[1]
            if message.get("event") == _MARK:
                self._marks.put(message["mark"])
            else:
                deliver(from_message(message))

        self.client.subscribe_topic(self.topic, handle)
        # The subscription travels on the client's stream, a publication from here on another connection: a mark
        # coming back shows the scheduler has the subscription before any training can publish.
        if not self._round_trip("open", attempts=50, wait=0.1):
            log.warning("no progress events from the Dask cluster: topic %s was not confirmed", self.topic)

    def _round_trip(self, mark: str, attempts: int, wait: float) -> bool:
        for i in range(attempts):
            self.client.log_event(self.topic, {"event": _MARK, "mark": f"{mark}-{i}"})
            try:
                while self._marks.get(timeout=wait) != f"{mark}-{i}":
                    pass
                return True
            except queue.Empty:
                continue
        return False

    def publish(self, event: Event) -> None:
        self.client.log_event(self.topic, to_message(event))

    def close(self) -> None:
        try:
            self._round_trip("close", attempts=1, wait=30)  # behind every event the scheduler has relayed before
        finally:
            self.client.unsubscribe_topic(self.topic)


# -- the stream -----------------------------------------------------------------------------------------------------
class ProgressStream:
    """One run's events in the flow process: ``transport`` brings them (the flow's own included, through
    :meth:`publish`), one dispatch thread hands each to the run's ``listeners`` and to the process's (see
    :func:`listening`). Use it as a context manager; leaving it delivers everything published before."""

    def __init__(self, transport: Transport, listeners: tuple[Listener, ...] = ()):
        self.transport = transport
        self.listeners = list(listeners)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._failed: set[int] = set()
        self._thread: threading.Thread | None = None

    @property
    def publisher(self) -> Publisher:
        """What a training task is given to publish its events."""
        return self.transport.publisher

    def publish(self, event: Event) -> None:
        """From the flow process. A transport that fails here (a Dask scheduler out of reach) loses the event, not
        the run."""
        try:
            self.transport.publish(event)
        except Exception:
            self._warn_once(self.transport, "progress event %s was lost (%s)", event, self.transport.name)

    def __enter__(self) -> "ProgressStream":
        # The flow's context goes with the dispatch thread: a listener may call Prefect (the progress artifact).
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._dispatch,),
                                        name="medstack-progress", daemon=True)
        self._thread.start()
        try:
            self.transport.open(self._inbox.put)
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.transport.close()
        except Exception:
            self._warn_once(self.transport, "the %s did not close cleanly", self.transport.name)
        finally:
            self._stop()

    def _warn_once(self, culprit: object, message: str, *args: object) -> None:
        if id(culprit) not in self._failed:  # once each: it may fail on every event
            self._failed.add(id(culprit))
            log.warning(message + "; the run goes on", *args, exc_info=True)

    def _stop(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=60)
        if self._thread.is_alive():
            log.warning("a progress listener is still busy; the run goes on without waiting for it")

    def _dispatch(self) -> None:
        while (event := self._inbox.get()) is not None:
            with _process_lock:
                listeners = [*self.listeners, *_process_listeners]
            for listener in listeners:
                try:
                    listener(event)
                except Exception:
                    self._warn_once(listener, "progress listener %r failed on %s", listener, event)
