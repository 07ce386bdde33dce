"""Decoding one image file into the uint8 pixels a model sees: the one function training and prediction share.

16-bit images are mapped to 8 bits by their nominal range (``value >> 8``), never clipped, so a 12-bit scan stored
in 16 bits comes out dark rather than saturated. Palette images go through RGBA so transparency converts cleanly.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})


class BadImage(Exception):
    """An image file that cannot be decoded; the message is the reason."""


def decode_image(file: Path | BinaryIO, size: tuple[int, int], mode: str) -> np.ndarray:
    """Decode, convert to ``mode`` and resize (bilinear) one image; raises :class:`BadImage`.

    ``file`` is a path or a seekable binary file object (an upload held in memory): PIL rewinds it on every open."""
    from PIL import Image

    try:
        with Image.open(file) as probe:
            probe.verify()
        with Image.open(file) as img:  # verify() leaves the image unusable, so reopen to decode
            img.load()
            img = _to_8bit(img)
            if img.mode == "P":
                img = img.convert("RGBA")  # palette transparency converts cleanly only via RGBA
            img = img.convert(mode).resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError, KeyError, IndexError, TypeError, EOFError, struct.error,
            Image.DecompressionBombError) as exc:  # what PIL's decoders raise on malformed files
        raise BadImage(f"{type(exc).__name__}: {exc}") from exc


def _to_8bit(img: "Image.Image") -> "Image.Image":
    """Map 16/32-bit integer images to 8 bits by their nominal 16-bit range (>> 8), not by clipping."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise BadImage(f"mode {img.mode} values {values.min()}..{values.max()} outside the 16-bit range")
        return Image.fromarray((values.astype(np.uint32) >> 8).astype(np.uint8), mode="L")
    if img.mode == "F":
        raise BadImage("floating-point images (mode F) are not supported; save as 8- or 16-bit")
    return img
