"""Run a fully convolutional denoiser on images of any size: padding and blended tiles.

Everything here is NumPy and backend-agnostic: ``run`` is any function mapping a float32
``B x C x h x w`` array to an array of the same shape (a backend's ``run``).

* Images smaller than the model's minimum (or than a fixed-shape graph) are padded by
  mirroring (``symmetric``, which works down to 1x1) and the result cropped.
* Images larger than the tile are cut into overlapping tiles. Each tile's output is weighted
  by a ramp that rises linearly across the overlap (flat where a tile touches the image
  border), and the weighted sum is normalised, so no seam shows. N3Net is non-local (its
  search window spans 75 px each way), so the default overlap is generous.
* Tiles keep the model's patch grid (``stride``): N3Net pads each input so that its patches
  tile it with stride 5, so a tile of another size or offset would cut the image into other
  patches than the whole-image run and differ everywhere, not just near its edges. Tiles
  therefore start at multiples of the stride and their size is congruent to the image's
  modulo the stride (same padding), so every tile sees exactly the whole image's patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["TilePlan", "tile_starts", "run_tiled"]

RunFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TilePlan:
    """How to cut an image: tile size (h, w), overlap in px, and the smallest size a run accepts.

    ``fixed``: the backend only accepts exactly ``tile`` (a fixed-shape graph or engine).
    """

    tile: tuple[int, int]
    overlap: int
    min_size: int = 1
    fixed: bool = False
    stride: int = 1  # keep the model's patch grid (not possible for fixed-shape backends)

    def __post_init__(self) -> None:
        if min(self.tile) < 1 or self.overlap < 0 or self.stride < 1:
            raise ValueError(f"bad tile plan {self}")
        if self.overlap * 2 >= min(self.tile):
            raise ValueError(f"overlap {self.overlap} must be less than half the tile {self.tile}")


def tile_starts(size: int, tile: int, overlap: int, stride: int = 1) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size`` with at least ``overlap`` shared.

    Starts are multiples of ``stride`` (the last one, ``size - tile``, too when ``tile`` is
    congruent to ``size`` modulo ``stride``: see :func:`aligned_tile`).
    """
    if size <= tile:
        return [0]
    step = max(stride, (tile - overlap) // stride * stride)
    n = -(-(size - tile) // step) + 1  # ceil
    starts = [min(i * step, size - tile) for i in range(n)]
    return sorted(set(starts))


def aligned_tile(size: int, tile: int, stride: int) -> int:
    """The largest tile length ``<= tile`` congruent to ``size`` modulo ``stride``."""
    return tile - (tile - size) % stride


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    w = np.ones(length, dtype=np.float32)
    if overlap > 0:
        r = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
        if not at_start:
            w[:overlap] = np.minimum(w[:overlap], r)
        if not at_end:
            w[-overlap:] = np.minimum(w[-overlap:], r[::-1])
    return w


def _pad_to(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Mirror-pad ``... x H x W`` to at least ``h x w`` (centred)."""
    ph, pw = max(h - x.shape[-2], 0), max(w - x.shape[-1], 0)
    if ph == 0 and pw == 0:
        return x
    pad = [(0, 0)] * (x.ndim - 2) + [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)]
    return np.pad(x, pad, mode="symmetric")


def _run_padded(run: RunFn, x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Run on ``x`` (B x C x H x W) padded to ``h x w``, cropped back to H x W."""
    hh, ww = x.shape[-2:]
    padded = _pad_to(x, h, w)
    out = run(np.ascontiguousarray(padded, dtype=np.float32))
    top, left = (padded.shape[-2] - hh) // 2, (padded.shape[-1] - ww) // 2
    return out[..., top : top + hh, left : left + ww]


def run_tiled(run: RunFn, x: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Denoise ``x`` (float32 ``B x C x H x W``) with ``run``, padding and tiling per ``plan``."""
    b, c, h, w = x.shape
    th, tw = plan.tile
    if h <= th and w <= tw:
        need_h = th if plan.fixed else max(h, plan.min_size)
        need_w = tw if plan.fixed else max(w, plan.min_size)
        return _run_padded(run, x, need_h, need_w)
    stride = 1
    if not plan.fixed:
        th, tw = min(th, h), min(tw, w)
        if min(th, tw) - plan.stride > 2 * plan.overlap:
            stride = plan.stride
            th, tw = aligned_tile(h, th, stride), aligned_tile(w, tw, stride)
    out = np.zeros((b, c, h, w), dtype=np.float32)
    weight = np.zeros((h, w), dtype=np.float32)
    rows, cols = tile_starts(h, th, plan.overlap, stride), tile_starts(w, tw, plan.overlap, stride)
    for r in rows:
        for s in cols:
            tile = x[..., r : r + th, s : s + tw]
            need_h = th if plan.fixed else max(tile.shape[-2], plan.min_size)
            need_w = tw if plan.fixed else max(tile.shape[-1], plan.min_size)
            y = _run_padded(run, tile, need_h, need_w)
            wr = _ramp(tile.shape[-2], plan.overlap, r == 0, r + th >= h)
            wc = _ramp(tile.shape[-1], plan.overlap, s == 0, s + tw >= w)
            wt = wr[:, None] * wc[None, :]
            out[..., r : r + th, s : s + tw] += y * wt
            weight[r : r + th, s : s + tw] += wt
    return out / weight
