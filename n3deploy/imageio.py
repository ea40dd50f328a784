"""Reading and writing images for the command line (Pillow; 16-bit via Pillow or tifffile)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InvalidImageError
from .fileio import atomic_path

__all__ = ["read_image", "write_image", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """``H x W`` or ``H x W x C`` array, uint8 or uint16 as stored."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im, dtype=np.uint16).copy()
            if im.mode == "I":
                return np.asarray(im).astype(np.uint16)
            if im.mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB")
            return np.asarray(im).copy()
    except UnidentifiedImageError:
        if path.suffix.lower() in (".tif", ".tiff"):
            try:
                import tifffile

                return np.asarray(tifffile.imread(path))
            except ImportError:
                pass
        raise InvalidImageError(f"{path}: not an image Pillow can read") from None
    except OSError as exc:
        raise InvalidImageError(f"{path}: cannot read image ({exc})") from None


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write atomically (a failure never leaves a half-written file). Format from the suffix."""
    from PIL import Image

    path = Path(path)
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if image.dtype == np.uint16 and image.ndim == 3:
            import tifffile  # Pillow cannot write 16-bit colour

            if suffix not in (".tif", ".tiff"):
                raise InvalidImageError(f"{path}: 16-bit colour images can only be written as TIFF")
            tifffile.imwrite(tmp, image)
        else:
            im = Image.fromarray(image)
            fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".png": "PNG", ".bmp": "BMP"}.get(suffix)
            if fmt is None:
                raise InvalidImageError(f"{path}: unsupported output format {suffix!r}")
            im.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path
