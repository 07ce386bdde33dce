"""Grad-CAM on a synthetic task where only a planted bright patch decides the class: the heatmap's peak must lie
on the patch. The bundle is trained for real (one strategy, 2 folds) by the ensemble flow, in this test process, on a generated
npz (the console script's own path is tests/test_cli.py's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medstack.inference.bundle import load_bundle
from medstack.inference.explain import gradcam, overlay

pytestmark = [pytest.mark.slow]

SIDE, PATCH = 28, 6
# The last conv layer of the 2-block CNN sees the image at half resolution (14 x 14), so a peak may land one
# feature-map cell (2 input pixels, counted in whole cells: pixels 0-1 are cell 0) beside the cells the patch covers.
CELL = 2


def _planted(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise images; class 1 has a bright PATCH x PATCH square at a random place. Returns images, labels, corners."""
    images = rng.integers(40, 90, size=(n, SIDE, SIDE), dtype=np.uint8)
    labels = np.arange(n) % 2
    corners = rng.integers(0, SIDE - PATCH + 1, size=(n, 2))
    for image, label, (y, x) in zip(images, labels, corners):
        if label:
            image[y : y + PATCH, x : x + PATCH] = rng.integers(230, 256, size=(PATCH, PATCH))
    return images, labels, corners


@pytest.fixture(scope="module")
def planted_bundle(tmp_path_factory, prefect_harness) -> Path:
    from medstack.config import RunConfig
    from medstack.flows.ensemble import ensemble_flow

    base = tmp_path_factory.mktemp("planted")
    images, labels, _ = _planted(800, np.random.default_rng(0))
    np.savez(base / "planted.npz", images=images, labels=labels)
    config = {
        "name": "planted-patch", "seed": 1,
        "data": {"source": "npz", "name": "planted", "path": str(base / "planted.npz"),
                 "class_names": ["empty", "patch"]},
        "split": {"folds": 2, "seed": 1},
        "model": {"filters": [8, 16], "convs_per_block": 1, "dense_units": 16, "batch_norm": False, "head": "gap",
                  "dropout": 0.0},
        "augmentation": {"rotation": 0.0, "zoom": 0.0, "shift": 0.0},  # no random layers, so XLA would compile: jit_compile off
        "training": {"epochs": 8, "jit_compile": False, "batch_size": 32, "learning_rate": 0.003, "min_steps": 0, "min_epoch_steps": 0,
                     # Val ROC AUC reaches 1.0 in the first epoch and ties never count as improvements, so an early
                     # stop watched from step 0 restored first-epoch weights (10 steps): no early stop here.
                     "stop_after_steps": 10_000, "patience_steps": 1000},
        "strategies": {"class_weight": {}}, "distill": {"enabled": False},
        "ensemble": {"inner_folds": 3}, "report": {"bootstrap": 20},
        "runtime": {"cache_dir": str(base / "cache"), "output_dir": str(base / "runs"), "task_runner": "threads"},
    }
    return Path(ensemble_flow(config=RunConfig.model_validate(config)))


def test_gradcam_peak_lies_on_the_planted_patch(planted_bundle):
    from medstack.inference.fused import MemberScorer

    bundle = load_bundle(planted_bundle)
    images, labels, corners = _planted(40, np.random.default_rng(7))
    positives = labels == 1
    x = images[positives][..., None]
    proba = MemberScorer(bundle)(x)["class_weight"]
    assert (proba[:, 1] > 0.5).all(), "the model did not learn the patch; Grad-CAM would explain nothing"
    heat = gradcam(bundle, "class_weight", x, np.ones(len(x), np.int64))
    assert heat.shape == (len(x), SIDE, SIDE) and heat.min() >= 0 and 0 < heat.max() <= 1  # mean of [0, 1] maps
    for h, (y, x0) in zip(heat, corners[positives]):
        py, px = np.unravel_index(np.argmax(h), h.shape)
        near = [start // CELL - 1 <= peak // CELL <= (start + PATCH - 1) // CELL + 1 for peak, start in ((py, y), (px, x0))]
        assert all(near), ((py, px), (y, x0))
    picture = overlay(x[0], heat[0])
    assert picture.shape == (224, 224, 3) and picture.dtype == np.uint8
