"""Image files as HTTP bodies: decode to numpy and encode back in the same format and bit depth.

The in-memory counterpart of :mod:`n3deploy.imageio` (which reads and writes paths): PNG, JPEG,
TIFF and BMP; grey, RGB and RGBA; 8 or 16 bits (16-bit colour through TIFF, as Pillow cannot
hold it). The pixel count is checked from the header before any pixel is decoded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from .protocol import ProtocolError

__all__ = ["DecodedImage", "decode_image", "encode_image", "MEDIA_TYPES"]

MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "TIFF": "image/tiff", "BMP": "image/bmp"}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class DecodedImage:
    """``pixels``: ``H x W`` or ``H x W x C`` uint8/uint16; ``format``: a key of :data:`MEDIA_TYPES`."""

    pixels: np.ndarray
    format: str

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]


def _too_large(h: int, w: int, max_pixels: int) -> ProtocolError:
    return ProtocolError(f"the image is {w}x{h} = {w * h} pixels, above this server's limit of {max_pixels} (--max-pixels)", 413)


def _decode_tiff(body: bytes, max_pixels: int) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(body)) as tif:
        shape = tif.pages[0].shape
        if len(shape) >= 2 and shape[0] * shape[1] > max_pixels:
            raise _too_large(shape[0], shape[1], max_pixels)
        return np.asarray(tif.asarray())


def decode_image(body: bytes, max_pixels: int) -> DecodedImage:
    """Decode an image file's bytes. Raises :class:`ProtocolError` (400 undecodable, 413 too many
    pixels, 415 an image this server cannot return in kind)."""
    from PIL import Image, UnidentifiedImageError

    if not body:
        raise ProtocolError("the request body is empty: send an image file (PNG, JPEG, TIFF or BMP)")
    if body.startswith(_PNG_MAGIC) and len(body) > 25 and body[24] == 16 and body[25] in (2, 6):
        raise ProtocolError("16-bit colour PNG is not supported (it would lose its bit depth): send 16-bit colour as TIFF", 415)
    try:
        with Image.open(io.BytesIO(body)) as im:
            fmt = im.format
            w, h = im.size
            if w * h > max_pixels:
                raise _too_large(h, w, max_pixels)
            if fmt not in MEDIA_TYPES:
                raise ProtocolError(f"unsupported image format {fmt}; send PNG, JPEG, TIFF or BMP", 415)
            if fmt == "TIFF":  # tifffile: Pillow reads 16-bit colour TIFF as 8-bit RGB
                return DecodedImage(_decode_tiff(body, max_pixels), "TIFF")
            if im.mode in ("I;16", "I;16B", "I;16L"):
                pixels = np.asarray(im, dtype=np.uint16).copy()
            elif im.mode == "I":
                pixels = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
            else:
                rgb = im if im.mode in ("L", "RGB", "RGBA") else im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                pixels = np.asarray(rgb).copy()
    except ProtocolError:
        raise
    except Image.DecompressionBombError as exc:
        raise ProtocolError(f"the image is too large to decode ({exc})", 413) from None
    except UnidentifiedImageError:
        try:
            return DecodedImage(_decode_tiff(body, max_pixels), "TIFF")
        except ProtocolError:
            raise
        except Exception:
            raise ProtocolError("the request body is not an image file Pillow or tifffile can decode (PNG, JPEG, TIFF, BMP)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ProtocolError(f"the image cannot be decoded ({exc})") from None
    if pixels.size == 0:
        raise ProtocolError("the image is empty")
    return DecodedImage(pixels, fmt)


def encode_image(pixels: np.ndarray, fmt: str) -> bytes:
    """Encode ``pixels`` (``H x W (x C)``, uint8/uint16) as ``fmt`` (PNG, JPEG, TIFF, BMP)."""
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "TIFF" and (pixels.dtype == np.uint16 and pixels.ndim == 3):
        import tifffile

        tifffile.imwrite(buf, pixels)
        return buf.getvalue()
    if pixels.dtype == np.uint16 and fmt in ("JPEG", "BMP"):
        raise ProtocolError(f"{fmt} cannot hold 16-bit pixels", 415)
    Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()
