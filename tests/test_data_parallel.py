"""Tests for loading an image folder at scale: parallel decoding (medstack.data.parallel) into one file-backed array
(medstack.data.scratch), and what load_image_folder builds from it."""

from __future__ import annotations

import mmap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medstack.data import DataError, decode_image, load_image_folder
from medstack.data.parallel import BATCH, decode_into
from medstack.data.scratch import scratch_array


def _mapping_of(array: np.ndarray) -> mmap.mmap | None:
    """The mmap an array's memory belongs to, following views back to their base; None for ordinary memory."""
    base = array
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    return base if isinstance(base, mmap.mmap) else None


def _write_folder(root: Path, per_class: tuple[int, ...] = (23, 31), bad: tuple[str, ...] = ()) -> Path:
    """Class folders of random RGB PNGs of varying sizes (so resizing matters); ``bad`` names truncated files."""
    rng = np.random.default_rng(5)
    for label, count in enumerate(per_class):
        for i in range(count):
            path = root / f"class_{label}" / f"sub{i % 3}" / f"img_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            shape = (20 + i % 7, 30 + i % 5, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    for name in bad:
        path = root / name
        payload = path.read_bytes()
        path.write_bytes(payload[: len(payload) // 2])
    return root


def _one_by_one(sources: tuple[str, ...], size: tuple[int, int]) -> np.ndarray:
    return np.stack([decode_image(Path(s), size, "RGB") for s in sources])


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_folder_loads_into_one_mapped_array_equal_to_decoding_one_by_one(tmp_path, workers):
    root = _write_folder(tmp_path / "f")
    ds = load_image_folder(root, (12, 16), 3, workers=workers)
    assert ds.images.shape == (54, 12, 16, 3) and ds.labels.tolist() == [0] * 23 + [1] * 31
    assert np.array_equal(ds.images, _one_by_one(ds.sources, (12, 16)))
    assert _mapping_of(ds.images) is not None  # file-backed, pageable; not process memory
    assert not ds.images.flags.writeable


def test_parallel_decoding_gives_the_same_dataset_as_one_worker(tmp_path):
    root = _write_folder(tmp_path / "f", per_class=(3 * BATCH + 5, 2 * BATCH))
    serial = load_image_folder(root, (9, 9), 3, workers=1)
    for _ in range(2):
        parallel = load_image_folder(root, (9, 9), 3, workers=3)
        assert parallel.sources == serial.sources and parallel.fingerprint() == serial.fingerprint()


@pytest.mark.parametrize("workers", [1, 3])
def test_unreadable_images_are_skipped_and_the_rest_close_up_in_order(tmp_path, workers):
    # Bad files in the first batch, in a later batch and in the last class: rows after each must move up.
    bad = ("class_0/sub1/img_001.png", "class_0/sub2/img_020.png", "class_1/sub0/img_030.png")
    root = _write_folder(tmp_path / "f", bad=bad)
    ds = load_image_folder(root, (8, 8), 3, on_bad_image="skip", workers=workers)
    assert [Path(p).relative_to(root).as_posix() for p, _ in ds.skipped] == sorted(bad)
    assert all(reason for _, reason in ds.skipped)
    assert len(ds.images) == len(ds.labels) == len(ds.sources) == 51
    assert ds.labels.tolist() == [0] * 21 + [1] * 30
    assert not set(ds.sources) & {p for p, _ in ds.skipped}
    assert np.array_equal(ds.images, _one_by_one(ds.sources, (8, 8)))


@pytest.mark.parametrize("workers", [1, 4])
def test_the_first_unreadable_image_in_file_order_is_the_error(tmp_path, workers):
    root = _write_folder(tmp_path / "f", bad=("class_0/sub2/img_020.png", "class_1/sub0/img_003.png"))
    with pytest.raises(DataError, match=r"class_0/sub2/img_020\.png: unreadable image .*on_bad_image: skip"):
        load_image_folder(root, (8, 8), 3, workers=workers)


def test_decode_into_stops_at_the_first_bad_file_or_reports_them_all(tmp_path):
    root = _write_folder(tmp_path / "f", per_class=(40,), bad=("class_0/sub0/img_018.png", "class_0/sub1/img_037.png"))
    files = sorted(root.rglob("*.png"))
    out = np.zeros((len(files), 5, 5, 3), np.uint8)
    every = decode_into(out, files, (5, 5), "RGB", workers=2)
    assert [files[row].name for row, _ in every] == ["img_018.png", "img_037.png"]
    first = decode_into(np.zeros_like(out), files, (5, 5), "RGB", workers=2, stop_at_first_bad=True)
    assert [files[row].name for row, _ in first] == ["img_018.png"]
    with pytest.raises(ValueError, match="3 files for 40 rows"):
        decode_into(out, files[:3], (5, 5), "RGB")
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        decode_into(out, files, (5, 5), "RGB", workers=0)


def test_loading_allocates_no_in_memory_copy_of_the_images(tmp_path):
    root = _write_folder(tmp_path / "f", per_class=(40, 40))
    tracemalloc.start()
    try:
        ds = load_image_folder(root, (64, 64), 3, workers=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # numpy reports its allocations to tracemalloc; the mapped array is not one. A list of decoded images to stack
    # (or any in-memory copy) would trace at least one full copy.
    assert ds.images.nbytes == 80 * 64 * 64 * 3
    assert peak < ds.images.nbytes / 2


def test_scratch_array_is_zeroed_writable_file_backed_and_reports_a_bad_folder(tmp_path):
    array = scratch_array((3, 4, 5), np.uint8, directory=tmp_path)
    assert array.shape == (3, 4, 5) and not array.any() and _mapping_of(array) is not None
    array[1] = 7
    assert array.sum() == 7 * 20
    assert list(tmp_path.iterdir()) == []  # the file has no name: nothing to clean up
    assert scratch_array((0, 4), np.uint8).shape == (0, 4)
    with pytest.raises(DataError, match=r"cannot make a 0 MiB scratch file .* in .*missing.*point TMPDIR"):
        scratch_array((10,), directory=tmp_path / "missing")
