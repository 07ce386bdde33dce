"""The parts of the server below HTTP: batching of concurrent requests, model swaps with requests in flight, and
the upload checks, each without uvicorn."""

from __future__ import annotations

import io
import json
import shutil
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medstack.data.images import decode_image
from medstack.serving.model import BatchScorer, ModelHolder, load_served
from medstack.serving.uploads import Limits, UploadRejected, decode_upload


class RecordingScorer:
    """A scorer of plain arithmetic (class 1 probability = mean pixel / 255) that records each call's batch size
    and can be held at a gate, so that requests pile up behind a busy call."""

    def __init__(self):
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.entered.set()
        self.gate.wait(10)
        self.sizes.append(len(images))
        p1 = images.reshape(len(images), -1).mean(axis=1) / 255.0
        return {"m": np.stack([1 - p1, p1], axis=1)}


def _images(values: list[int]) -> np.ndarray:
    return np.stack([np.full((4, 4, 1), v, np.uint8) for v in values])


def test_requests_queued_behind_a_busy_call_share_one_batch_and_get_their_own_rows():
    scorer = RecordingScorer()
    batcher = BatchScorer(scorer, max_batch=100)
    scorer.gate.clear()
    first = batcher.submit(_images([0]))
    assert scorer.entered.wait(10)  # the worker is now inside the first call, held at the gate
    waiting = [batcher.submit(_images([v, v])) for v in (51, 102, 153)]
    scorer.gate.set()
    assert first.result(10)["m"][:, 1].tolist() == [0.0]
    for future, v in zip(waiting, (51, 102, 153)):
        assert future.result(10)["m"][:, 1].tolist() == pytest.approx([v / 255] * 2)
    assert scorer.sizes == [1, 6]
    assert (batcher.calls, batcher.images, batcher.largest_batch) == (2, 7, 6)
    batcher.close(wait=True)


def test_a_request_is_never_split_and_batches_stop_growing_at_max_batch():
    scorer = RecordingScorer()
    batcher = BatchScorer(scorer, max_batch=3)
    scorer.gate.clear()
    batcher.submit(_images([0]))
    assert scorer.entered.wait(10)
    futures = [batcher.submit(_images([1] * n)) for n in (2, 5, 1, 1)]
    scorer.gate.set()
    for future, n in zip(futures, (2, 5, 1, 1)):
        assert len(future.result(10)["m"]) == n
    assert scorer.sizes == [1, 2, 5, 2]  # 2 (then 5 would pass 3: next batch), 5 alone, then 1 + 1
    batcher.close(wait=True)


def test_a_scoring_error_reaches_every_waiting_request():
    def broken(images):
        raise RuntimeError("out of memory")

    batcher = BatchScorer(broken)
    futures = [batcher.submit(_images([1])) for _ in range(3)]
    for future in futures:
        with pytest.raises(RuntimeError, match="out of memory"):
            future.result(10)
    batcher.close(wait=True)


def test_close_scores_what_was_submitted_first_and_refuses_more():
    scorer = RecordingScorer()
    batcher = BatchScorer(scorer)
    futures = [batcher.submit(_images([1])) for _ in range(5)]
    batcher.close(wait=True)
    assert all(f.done() and len(f.result()["m"]) == 1 for f in futures)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(_images([1]))


def test_scores_of_the_wrong_length_fail_the_requests_instead_of_hanging_them():
    batcher = BatchScorer(lambda images: {"m": None})  # not an array: slicing it fails after the call
    future = batcher.submit(_images([1]))
    with pytest.raises(TypeError):
        future.result(10)
    assert batcher.submit(_images([1])).exception(10) is not None  # the thread is still alive
    batcher.close(wait=True)


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_an_upload_decodes_exactly_as_the_file_on_disk(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)
    data = _png_bytes(pixels)
    (tmp_path / "scan.png").write_bytes(data)
    stats = {"shape": [28, 28, 1], "image_mean_range": [0, 255], "image_std_range": [0, 255]}
    decoded = decode_upload("scan.png", "image/png", data, (28, 28, 1), stats, Limits())
    assert np.array_equal(decoded.pixels, decode_image(tmp_path / "scan.png", (28, 28), "L").reshape(28, 28, 1))
    assert decoded.warnings == []
    colour = np.random.default_rng(1).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    warned = decode_upload("colour.png", None, _png_bytes(colour), (28, 28, 1), stats, Limits())
    assert any("colour image converted to grayscale" in w for w in warned.warnings)


@pytest.mark.parametrize("name, kind, data, status", [
    ("a.gif", "image/gif", b"GIF89a", 415),
    ("a.svg", "application/octet-stream", b"<svg/>", 415),
    ("a", None, b"no header at all", 422),
    ("a.png", "image/png", b"", 422),
])
def test_upload_refusals_carry_their_status(name, kind, data, status):
    stats = {"shape": [28, 28, 1], "image_mean_range": [0, 255], "image_std_range": [0, 255]}
    with pytest.raises(UploadRejected) as refused:
        decode_upload(name, kind, data, (28, 28, 1), stats, Limits())
    assert refused.value.status == status and name in refused.value.message


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        Limits(max_files=0)


@pytest.mark.slow
@pytest.mark.e2e
def test_requests_in_flight_finish_on_the_old_model(smoke_bundle, tmp_path):
    from medstack.inference.registry import promote

    runs = tmp_path / "runs"
    for run_id in ("run-a", "run-b"):
        shutil.copytree(smoke_bundle, runs / run_id)
        meta = json.loads((runs / run_id / "model.json").read_text())
        meta["run_id"] = run_id
        (runs / run_id / "model.json").write_text(json.dumps(meta))
    registry = runs / "registry.json"
    promote(runs / "run-a", "champion", registry=registry)
    # The student engine: one network a bundle to load and trace (the swap is the same for any engine).
    holder = ModelHolder("pneumoniamnist-smoke@champion", registry, loader=partial(load_served, engine="student"))
    image = np.zeros((1, 28, 28, 1), np.uint8)
    with holder.use() as old:
        promote(runs / "run-b", "champion", registry=registry)
        event = holder.reload()
        assert event["changed"] and holder.current.run_id == "run-b" and old.run_id == "run-a"
        assert old.retired and old.users == 1
        assert set(old.batcher.submit(image).result(60)) == {"student"}  # still scoring
    assert old.users == 0
    old.batcher._thread.join(10)
    assert not old.batcher._thread.is_alive()  # stopped once its last request was done
    with holder.use() as new:
        assert new.run_id == "run-b" and new.batcher.submit(image).result(60)
    holder.close()
    holder.current.batcher._thread.join(10)
    assert Path(holder.current.bundle.root).name == "run-b"
