"""Uploaded image files to model pixels, or a 4xx reason: the checks ``POST /predict`` makes on every file.

Decoding is :func:`medstack.data.images.decode_image`, the function training used, so an uploaded file scores
exactly as ``medstack predict`` scores the same file on disk. Nothing here raises anything but
:class:`UploadRejected` for bad input.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medstack.data.images import IMAGE_EXTENSIONS, decode_image
from medstack.inference.inputs import probe_warnings
from medstack.inference.stats import pixel_warnings

# The image types training reads (IMAGE_EXTENSIONS); a part sent without a type (or as octet-stream) is judged by
# its file name's extension, and failing that by decoding it.
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/pjpeg", "image/tiff", "image/bmp",
                         "image/x-bmp", "image/x-ms-bmp"})
UNTYPED = frozenset({"", "application/octet-stream"})


class UploadRejected(Exception):
    """A request the server refuses: ``status`` is the HTTP code (413, 415, 422), ``message`` says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Limits:
    """What one ``POST /predict`` may carry."""

    max_upload_bytes: int = 32 * 1024 * 1024
    max_files: int = 256
    max_pixels: int = 64_000_000  # per image, before resizing: a 64-megapixel scan decodes to 64-192 MB

    def __post_init__(self):
        if min(self.max_upload_bytes, self.max_files, self.max_pixels) < 1:
            raise ValueError(f"limits must be positive: {self}")


@dataclass
class DecodedUpload:
    name: str
    pixels: np.ndarray  # (H, W, C) uint8, the model's input shape
    warnings: list[str]


def decode_upload(name: str, content_type: str | None, data: bytes, shape: tuple[int, int, int],
                  stats: dict, limits: Limits) -> DecodedUpload:
    """One uploaded file as the model's pixels, with its drift warnings; raises :class:`UploadRejected`."""
    kind = (content_type or "").split(";")[0].strip().lower()
    suffix = Path(name).suffix.lower()
    if kind not in UNTYPED and kind not in IMAGE_TYPES:
        raise UploadRejected(415, f"{name}: content type {kind!r} is not an image type this model reads "
                                  f"(PNG, JPEG, TIFF or BMP)")
    if kind in UNTYPED and suffix and suffix not in IMAGE_EXTENSIONS:
        raise UploadRejected(415, f"{name}: {suffix!r} is not an image type this model reads "
                                  f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
    if not data:
        raise UploadRejected(422, f"{name}: empty file")
    _check_pixels(name, data, limits)
    mode = "L" if shape[-1] == 1 else "RGB"
    try:
        pixels = decode_image(io.BytesIO(data), shape[:2], mode).reshape(shape)
    except MemoryError:
        raise
    except Exception as exc:  # BadImage, or whatever else a decoder raises on these bytes: the client's file
        reason = "no PNG, JPEG, TIFF or BMP header" if "UnidentifiedImageError" in str(exc) else str(exc)
        raise UploadRejected(422, f"{name}: cannot decode this image for a "
                                  f"{'grayscale' if mode == 'L' else 'RGB'} model ({reason})") from exc
    found = probe_warnings(io.BytesIO(data), stats) + pixel_warnings(pixels[None], stats)[0]
    return DecodedUpload(name=name, pixels=pixels, warnings=[text for _, text in found])


def _check_pixels(name: str, data: bytes, limits: Limits) -> None:
    """Refuse an image whose header promises more pixels than the limit, before decoding it (a small PNG can
    expand to gigabytes)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:
        raise UploadRejected(413, f"{name}: {exc}") from exc
    except Exception:  # not identifiable: decode_image gives the precise reason
        return
    if width * height > limits.max_pixels:
        raise UploadRejected(413, f"{name}: {width}x{height} pixels is more than this server's limit of "
                                  f"{limits.max_pixels:,} pixels per image")
