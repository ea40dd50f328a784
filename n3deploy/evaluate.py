"""Denoising evaluation: a fixed, documented noise protocol and PSNR/SSIM per image.

Protocol (the one the N3Net and DnCNN papers use, made exactly reproducible):

1. Images are read in **sorted file-name order** as float ``[0, 1]`` (8-bit files / 255),
   grayscale or RGB (``channels``).
2. Image ``i`` (0-based, in that order) gets its **own generator**
   ``numpy.random.default_rng([seed, i])``; the noise is
   ``sigma / 255 * rng.standard_normal(image.shape)`` drawn in float64 and added to the
   float image. The noisy image is **not clipped** and not quantised; it is cast to float32
   for the model.
3. The model output is **clipped to [0, 1]** (not quantised), then
   ``skimage.metrics.peak_signal_noise_ratio`` and ``structural_similarity`` are computed
   against the clean image with ``data_range=1``.
4. The reported mean is the arithmetic mean of per-image PSNR (and SSIM), as in the papers.

Because each image has its own generator, an image's noise does not depend on which other
images are in the folder or on the order they are processed.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .fileio import atomic_path

__all__ = [
    "add_noise",
    "image_rng",
    "psnr",
    "ssim",
    "ImageResult",
    "EvalReport",
    "evaluate_images",
    "evaluate_arrays",
    "DenoiseFn",
]

#: ``B x C x H x W`` float32 noisy batch -> ``B x C x H x W`` float32 estimate (unclipped).
DenoiseFn = Callable[[np.ndarray], np.ndarray]


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The noise generator of the ``index``-th image (sorted order) for protocol seed ``seed``."""
    return np.random.default_rng([int(seed), int(index)])


def add_noise(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``clean + sigma/255 * N(0, 1)``: additive white Gaussian noise on a [0, 1] image.

    Args:
        clean: float array of any shape (e.g. ``C x H x W``) with values in [0, 1].
        sigma: noise standard deviation on the 0-255 scale (25 means 25/255 on [0, 1]).
        rng: the generator to draw from (see :func:`image_rng`).

    Returns:
        float32 array of ``clean``'s shape; **not clipped** (values may leave [0, 1]).
    """
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    noise = rng.standard_normal(np.shape(clean))  # float64
    return (np.asarray(clean, dtype=np.float64) + (sigma / 255.0) * noise).astype(np.float32)


def psnr(clean: np.ndarray, estimate: np.ndarray) -> float:
    """PSNR in dB of ``estimate`` (clipped to [0, 1] here) against ``clean`` (``C x H x W``)."""
    from skimage.metrics import peak_signal_noise_ratio

    est = np.clip(estimate, 0.0, 1.0).astype(np.float64)
    return float(peak_signal_noise_ratio(np.asarray(clean, dtype=np.float64), est, data_range=1.0))


def ssim(clean: np.ndarray, estimate: np.ndarray) -> float:
    """SSIM (scikit-image defaults, ``data_range=1``) of ``C x H x W`` images, estimate clipped."""
    from skimage.metrics import structural_similarity

    est = np.clip(estimate, 0.0, 1.0).astype(np.float64)
    ref = np.asarray(clean, dtype=np.float64)
    if ref.shape[0] == 1:
        return float(structural_similarity(ref[0], est[0], data_range=1.0))
    return float(structural_similarity(ref, est, data_range=1.0, channel_axis=0))


@dataclass(frozen=True)
class ImageResult:
    """Metrics of one image: ``psnr_noisy`` is the noisy input's PSNR (unclipped)."""

    name: str
    psnr: float
    ssim: float
    psnr_noisy: float
    seconds: float


@dataclass
class EvalReport:
    """Per-image results and their means, plus what produced them."""

    sigma: float
    seed: int
    images: list[ImageResult] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_psnr(self) -> float:
        return float(np.mean([r.psnr for r in self.images])) if self.images else float("nan")

    @property
    def mean_ssim(self) -> float:
        return float(np.mean([r.ssim for r in self.images])) if self.images else float("nan")

    @property
    def mean_psnr_noisy(self) -> float:
        return float(np.mean([r.psnr_noisy for r in self.images])) if self.images else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "sigma": self.sigma,
            "seed": self.seed,
            "mean_psnr": self.mean_psnr,
            "mean_ssim": self.mean_ssim,
            "mean_psnr_noisy": self.mean_psnr_noisy,
            "num_images": len(self.images),
            "protocol": "noise = sigma/255 * default_rng([seed, i]).standard_normal(shape) on [0,1] "
            "float images in sorted file order, noisy not clipped, output clipped to [0,1]; "
            "skimage PSNR/SSIM with data_range=1",
            "images": [asdict(r) for r in self.images],
            **({"info": self.info} if self.info else {}),
        }

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON atomically."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def evaluate_arrays(
    denoise: DenoiseFn,
    images: Sequence[np.ndarray],
    sigma: float,
    seed: int = 0,
    names: Sequence[str] | None = None,
    progress: bool = False,
) -> EvalReport:
    """Evaluate ``denoise`` on clean ``C x H x W`` float images in [0, 1] (already in order).

    Each image is denoised alone (batch of one) so any size works.
    """
    names = list(names) if names is not None else [f"image_{i:03d}" for i in range(len(images))]
    if len(names) != len(images):
        raise ValueError("names and images differ in length")
    report = EvalReport(sigma=float(sigma), seed=int(seed))
    iterator = zip(names, images)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(images), desc=f"eval sigma={sigma:g}", unit="img")
    for i, (name, clean) in enumerate(iterator):
        if clean.ndim != 3:
            raise ValueError(f"{name}: expected a C x H x W image, got shape {clean.shape}")
        noisy = add_noise(clean, sigma, image_rng(seed, i))
        start = time.perf_counter()
        out = np.asarray(denoise(noisy[None]))
        seconds = time.perf_counter() - start
        if out.shape != (1, *clean.shape):
            raise ValueError(f"{name}: denoiser returned shape {out.shape}, expected {(1, *clean.shape)}")
        result = ImageResult(
            name=name,
            psnr=psnr(clean, out[0]),
            ssim=ssim(clean, out[0]),
            psnr_noisy=_psnr_unclipped(clean, noisy),
            seconds=seconds,
        )
        report.images.append(result)
        if progress:
            iterator.set_postfix(psnr=f"{report.mean_psnr:.2f}")
    return report


def evaluate_images(
    denoise: DenoiseFn,
    folder: str | os.PathLike,
    sigma: float,
    seed: int = 0,
    channels: int = 1,
    progress: bool = False,
) -> EvalReport:
    """Evaluate ``denoise`` on every image of ``folder`` (sorted by file name); see module doc."""
    from .training.data import list_images, load_image

    paths = list_images(folder)
    images = [load_image(p, channels) for p in paths]
    report = evaluate_arrays(denoise, images, sigma, seed, names=[p.name for p in paths], progress=progress)
    report.info["images_dir"] = str(folder)
    return report


def _psnr_unclipped(clean: np.ndarray, noisy: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(noisy, np.float64) - np.asarray(clean, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)
