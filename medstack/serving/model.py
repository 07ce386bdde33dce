"""The model a server answers with: loaded once, scored by one thread in batches, swapped whole on reload.

A :class:`ServedModel` is a loaded bundle, its fused scorer (the graph ``medstack predict`` uses) and a
:class:`BatchScorer`. The :class:`ModelHolder` hands the current one to each request (:meth:`ModelHolder.use`) for the
whole request, so a reload swaps in a new model while requests in flight finish on the old one; the old scorer's
thread stops after its last request is released.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from medstack.inference.bundle import Bundle, bundle_folder, load_bundle
from medstack.inference.trust import NO_TRUST

log = logging.getLogger("medstack.serving")

Scores = dict[str, np.ndarray]
_STOP = object()  # queued by BatchScorer.close: everything before it is scored, then the thread ends


class BatchScorer:
    """One worker thread calls ``scorer``; requests that queue up while it is busy are scored together.

    A request's images always stay in one call (never split, even when it alone holds more than ``max_batch``);
    requests waiting in the queue are joined to it while the total stays within ``max_batch`` images. TensorFlow runs one graph call at a time here, on all its intra-op threads, instead of
    several requests competing for the same cores.
    """

    def __init__(self, scorer: Callable[[np.ndarray], Scores], max_batch: int = 256, name: str = "medstack-scorer"):
        self._scorer = scorer
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.calls = 0
        self.images = 0
        self.largest_batch = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, images: np.ndarray) -> Future:
        """A future of ``{model: (n, K) probabilities}`` for these ``n`` images."""
        if self._closed:
            raise RuntimeError("this scorer was closed (its model was replaced or the server is stopping)")
        future: Future = Future()
        self._queue.put((np.asarray(images), future))
        return future

    def close(self, wait: bool = False) -> None:
        """Stop after everything already submitted is scored."""
        self._closed = True
        self._queue.put(_STOP)
        if wait:
            self._thread.join()

    def _loop(self) -> None:
        carried = None  # a request that did not fit the previous batch (or the stop mark): it comes next
        while True:
            first = carried if carried is not None else self._queue.get()
            carried = None
            if first is _STOP:
                return
            group, size = [first], len(first[0])
            while size < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP or size + len(item[0]) > self.max_batch:
                    carried = item
                    break
                group.append(item)
                size += len(item[0])
            self._score(group)

    def _score(self, group: list[tuple[np.ndarray, Future]]) -> None:
        live = [(x, f) for x, f in group if f.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            scores = self._scorer(np.concatenate([x for x, _ in live]))
            size = sum(len(x) for x, _ in live)
            self.calls, self.images, self.largest_batch = self.calls + 1, self.images + size, max(self.largest_batch, size)
            start = 0
            for x, future in live:
                future.set_result({name: value[start : start + len(x)] for name, value in scores.items()})
                start += len(x)
        except Exception as exc:  # a failure answers every request still waiting, never hangs it
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)


@dataclass(eq=False)
class ServedModel:
    """A bundle being served: whose label answers (``model``) and under which decision."""

    bundle: Bundle
    model: str
    batcher: BatchScorer
    loaded_at: str
    load_seconds: float
    users: int = 0
    retired: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def run_id(self) -> str:
        return self.bundle.run_id

    @property
    def decision(self) -> dict[str, Any]:
        return self.bundle.decision(self.model)

    def _release(self) -> None:
        with self._lock:
            self.users -= 1
            done = self.retired and self.users == 0
        if done:
            self.batcher.close()

    def _retire(self) -> None:
        with self._lock:
            self.retired = True
            done = self.users == 0
        if done:
            self.batcher.close()


def load_served(ref: str | Path, registry: str | Path | None = None, use: str | None = None,
                max_batch: int = 256, engine: str = "fused") -> ServedModel:
    """Load a bundle (a run folder or ``<name>@<alias>``), build its scorer and trace it once on a blank image, so
    the first request is not the one that pays for tracing. A wrong reference or model name fails before
    TensorFlow is imported (seconds), so a typo is answered at once."""
    started = time.perf_counter()
    bundle = load_bundle(ref, registry)
    model = bundle.model_for(use, engine)
    from medstack.inference.fused import make_scorer  # TensorFlow: only once the bundle is known to be good

    if not bundle.has_trust:
        log.warning("run %s: %s", bundle.run_id, NO_TRUST)
    scorer = make_scorer(bundle, engine)
    scorer(np.zeros((1, *bundle.input_shape), np.uint8))
    return ServedModel(bundle=bundle, model=model, batcher=BatchScorer(scorer, max_batch),
                       loaded_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       load_seconds=round(time.perf_counter() - started, 2))


class ModelHolder:
    """The served model and how to replace it: :meth:`reload` resolves the reference again (a registry alias moves
    when a run is promoted) and swaps only when it names another run folder."""

    def __init__(self, ref: str | Path, registry: str | Path | None = None, use: str | None = None,
                 max_batch: int = 256, loader: Callable[..., ServedModel] = load_served):
        self.ref, self.registry, self.use_model, self.max_batch = str(ref), registry, use, max_batch
        self._loader = loader
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self.reloads: list[dict[str, Any]] = []
        self._current = loader(self.ref, registry, use, max_batch)

    @property
    def current(self) -> ServedModel:
        return self._current

    @contextmanager
    def use(self) -> Iterator[ServedModel]:
        """The current model, kept for this request even if a reload replaces it meanwhile."""
        with self._lock:
            served = self._current
            with served._lock:
                served.users += 1
        try:
            yield served
        finally:
            served._release()

    def reload(self) -> dict[str, Any]:
        """Resolve the reference again; load and swap when it names another run. Errors leave the old model
        serving and propagate (a BundleError or RegistryError naming the file)."""
        with self._reload_lock:
            old = self._current
            if bundle_folder(self.ref, self.registry) == old.bundle.root:
                return self._event(old, old, changed=False)
            new = self._loader(self.ref, self.registry, self.use_model, self.max_batch)
            with self._lock:
                self._current = new
            old._retire()
            return self._event(old, new, changed=True)

    def close(self) -> None:
        with self._reload_lock:  # a reload finishing now must not leave its new model's thread running
            self._current._retire()

    def _event(self, old: ServedModel, new: ServedModel, changed: bool) -> dict[str, Any]:
        event = {"changed": changed, "run_id": new.run_id, "previous_run_id": old.run_id if changed else None,
                 "bundle": str(new.bundle.root), "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        if changed:
            self.reloads.append(event)
        return event
