"""Training data: images from a folder, random crops with flips/rotations, noise drawn on the fly.

Reproducibility and exact resume come from *stateless* sampling: the crops and the noise of
step ``s`` on rank ``r`` are drawn from a fresh ``numpy`` generator seeded with
``SeedSequence([seed, s, r])``. Nothing has to be saved to continue a run exactly, and every
rank of a data-parallel run sees different patches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "list_images",
    "load_image",
    "load_folder",
    "PatchSampler",
    "step_rng",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (the order evaluation relies on)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidImageError(f"{folder}: not a directory of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidImageError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def load_image(path: str | os.PathLike, channels: int) -> np.ndarray:
    """Read an image as float32 ``channels x H x W`` in [0, 1] (8-bit and 16-bit files).

    ``channels`` is 1 (converted to grayscale, ITU-R 601 luma as Pillow's ``L``) or 3 (RGB).
    """
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I") and channels == 1:
                arr = np.asarray(img, dtype=np.float32) / 65535.0
                return arr[None]
            arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as exc:
        raise InvalidImageError(f"{path}: cannot read image ({exc})") from None
    return arr[None] if channels == 1 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_folder(folder: str | os.PathLike, channels: int) -> list[np.ndarray]:
    """All images of ``folder`` (sorted) as ``channels x H x W`` float32 arrays."""
    return [load_image(p, channels) for p in list_images(folder)]


def step_rng(seed: int, step: int, rank: int = 0) -> np.random.Generator:
    """The generator of training step ``step`` on rank ``rank`` (stateless, resume-exact)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, step, rank])))


@dataclass
class PatchSampler:
    """Draws noisy/clean training batches from in-memory images.

    Attributes:
        images: list of ``C x H x W`` float32 arrays in [0, 1].
        crop: square crop side in pixels (images smaller than this are rejected).
        sigma: noise standard deviation on the 0-255 scale (fixed-noise training), or
        sigma_range: ``(low, high)`` on the 0-255 scale: each patch draws its own sigma
            uniformly (blind training). Overrides ``sigma`` when given.
        augment: random flips and 90-degree rotations (the 8 dihedral transforms).
    """

    images: list[np.ndarray]
    crop: int
    sigma: float = 25.0
    sigma_range: tuple[float, float] | None = None
    augment: bool = True

    def __post_init__(self) -> None:
        if not self.images:
            raise InvalidImageError("no training images")
        too_small = [i for i, im in enumerate(self.images) if min(im.shape[-2:]) < self.crop]
        if too_small:
            shape = self.images[too_small[0]].shape
            raise InvalidImageError(
                f"{len(too_small)} training image(s) smaller than the {self.crop}px crop "
                f"(e.g. #{too_small[0]} of shape {shape}); use a smaller --crop"
            )
        if self.sigma_range is not None:
            low, high = self.sigma_range
            if not 0 <= low <= high:
                raise ValueError(f"sigma range must satisfy 0 <= low <= high, got {self.sigma_range}")
        elif self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One batch: ``(noisy, clean, sigmas)``.

        Returns:
            noisy: ``B x C x crop x crop`` float32, ``clean + sigma/255 * N(0, 1)`` (not clipped).
            clean: ``B x C x crop x crop`` float32 in [0, 1].
            sigmas: ``B`` float32, the noise level of each patch on the 0-255 scale.
        """
        c = self.crop
        clean = np.empty((batch_size, self.images[0].shape[0], c, c), dtype=np.float32)
        for b in range(batch_size):
            img = self.images[int(rng.integers(len(self.images)))]
            top = int(rng.integers(img.shape[-2] - c + 1))
            left = int(rng.integers(img.shape[-1] - c + 1))
            patch = img[:, top : top + c, left : left + c]
            if self.augment:
                patch = np.rot90(patch, k=int(rng.integers(4)), axes=(1, 2))
                if rng.integers(2):
                    patch = patch[:, :, ::-1]
            clean[b] = patch
        if self.sigma_range is not None:
            sigmas = rng.uniform(self.sigma_range[0], self.sigma_range[1], size=batch_size).astype(np.float32)
        else:
            sigmas = np.full(batch_size, self.sigma, dtype=np.float32)
        noise = rng.standard_normal(clean.shape, dtype=np.float32)
        noisy = clean + noise * (sigmas[:, None, None, None] / np.float32(255.0))
        return noisy.astype(np.float32, copy=False), clean, sigmas
