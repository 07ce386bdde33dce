"""Training-data statistics kept in the bundle, and the input-drift checks predict runs against them.

The checks are deliberately simple and say what they saw: an image whose colour, bit depth, size or brightness is
far from anything the model trained on gets a warning, per file and in a summary. A warning, not a refusal: the
probabilities are still written, so the user decides.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

_QUANTILES = (0.001, 0.999)  # per-image brightness/contrast range of the training images kept in the bundle
_MARGIN = 0.25  # an image may lie this share of the training range outside it before a warning
_COLOUR_SPREAD = 12  # max |R-G|, |G-B| (0..255) above which an image is a colour image, not grey stored as RGB
_RESIZE_FACTOR = 4.0  # source/training size ratio beyond which a resize warning is given
_ASPECT_FACTOR = 1.5  # aspect-ratio ratio beyond which the bilinear resize distorts the image


def training_statistics(images: np.ndarray, chunk: int = 1024) -> dict[str, Any]:
    """Size, channels and intensity statistics of the training images (N, H, W, C) uint8, in chunks (a 224 x 224
    RGB dataset must not be copied to float64 whole)."""
    n, channels = len(images), images.shape[-1]
    sums, squares = np.zeros(channels), np.zeros(channels)
    means, stds = np.empty(n), np.empty(n)
    for start in range(0, n, chunk):
        x = np.asarray(images[start : start + chunk], np.float64)
        sums += x.sum(axis=(0, 1, 2))
        squares += (x**2).sum(axis=(0, 1, 2))
        means[start : start + len(x)] = x.mean(axis=(1, 2, 3))
        stds[start : start + len(x)] = x.std(axis=(1, 2, 3))
    pixels = n * images.shape[1] * images.shape[2]
    mean = sums / pixels
    return {
        "n_images": int(n),
        "shape": [int(v) for v in images.shape[1:]],
        "pixel_mean": mean.round(4).tolist(),
        "pixel_std": np.sqrt(np.maximum(squares / pixels - mean**2, 0.0)).round(4).tolist(),
        "image_mean_range": np.quantile(means, _QUANTILES).round(4).tolist(),
        "image_std_range": np.quantile(stds, _QUANTILES).round(4).tolist(),
    }


def source_warnings(mode: str, size: tuple[int, int], colour: bool | None, stats: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, message) warnings about an image file before decoding: bit depth, colour vs grey, size and aspect ratio.

    ``size`` is (width, height) as PIL reports it; ``colour`` says whether an RGB file really holds colour."""
    out = []
    height, width, channels = stats["shape"]
    if mode.startswith("I;16") or mode in ("I", "F"):
        bits = 16 if "16" in mode else 32
        out.append(("bit depth", f"{bits}-bit image (mode {mode}) mapped to 8 bits; the model trained on 8-bit images"))
    if channels == 1 and colour:
        out.append(("colour", "colour image converted to grayscale; the model trained on grayscale images"))
    if channels == 3 and mode in ("L", "LA", "1", "I;16", "I"):
        out.append(("grayscale", "grayscale image converted to RGB; the model trained on colour images"))
    w, h = size
    if w and h:
        ratio = (w / h) / (width / height)
        if max(ratio, 1 / ratio) > _ASPECT_FACTOR:
            out.append(("aspect ratio", f"aspect ratio {w}x{h} differs from the model's {width}x{height}: resizing distorts it"))
        factor = max(w / width, h / height, width / w, height / h)
        if factor > _RESIZE_FACTOR:
            out.append(("size", f"{w}x{h} image resized to {width}x{height} (a factor of {factor:.1f})"))
    return out


def pixel_warnings(images: np.ndarray, stats: dict[str, Any]) -> list[list[tuple[str, str]]]:
    """Per image (N, H, W, C) uint8: warnings when brightness or contrast lies far outside the training range."""
    x = np.asarray(images, np.float64)
    means, stds = x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3))
    lo_m, hi_m = _widen(stats["image_mean_range"])
    lo_s, hi_s = _widen(stats["image_std_range"])
    out = []
    for mean, std in zip(means, stds):
        found = []
        if std < 1.0:
            found.append(("uniform", f"uniform image (mean {mean:.0f}, std {std:.2f}): an empty, black or saturated frame?"))
        elif not lo_s <= std <= hi_s:
            found.append(("contrast", f"contrast (std {std:.1f}) outside the training range {lo_s:.1f}..{hi_s:.1f}"))
        if not lo_m <= mean <= hi_m:
            found.append(("brightness", f"brightness (mean {mean:.1f}) outside the training range {lo_m:.1f}..{hi_m:.1f}"))
        out.append(found)
    return out


def _widen(bounds: list[float]) -> tuple[float, float]:
    low, high = bounds
    span = max(high - low, 1.0)
    return low - _MARGIN * span, high + _MARGIN * span


def summarise_warnings(per_item: list[list[tuple[str, str]]]) -> Counter:
    """How many inputs got each kind of warning."""
    return Counter(kind for warnings in per_item for kind in dict.fromkeys(k for k, _ in warnings))
