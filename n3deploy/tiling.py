"""Run a fully convolutional denoiser on images of any size: padding and blended tiles.

Everything here is NumPy and backend-agnostic: ``run`` is any function mapping a float32
``B x C x h x w`` array to an array of the same shape (a backend's ``run``).

* Tiles of the same padded size, of one image and of several, are sent to ``run`` as one
  ``n x C x h x w`` batch of at most ``max_batch`` samples (:func:`run_tiled_many`).

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
from typing import Callable, Sequence

import numpy as np

__all__ = ["TilePlan", "tile_starts", "run_tiled", "run_tiled_many"]

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


def _crop_box(padded: tuple[int, int], size: tuple[int, int]) -> tuple[slice, slice]:
    """Where an ``h x w`` region sits inside its centred mirror-padded version."""
    top, left = (padded[0] - size[0]) // 2, (padded[1] - size[1]) // 2
    return slice(top, top + size[0]), slice(left, left + size[1])


@dataclass(frozen=True)
class _Tile:
    """One run input: image ``image``'s region ``rows x cols``, padded to ``padded`` (h, w).

    ``weight`` is the blending ramp (``h x w``), ``None`` when the region is the whole image.
    """

    image: int
    rows: slice
    cols: slice
    padded: tuple[int, int]
    weight: "np.ndarray | None"


def _plan_tiles(index: int, shape: tuple[int, int], plan: TilePlan) -> list[_Tile]:
    """The tiles of one ``H x W`` image under ``plan`` (one unblended tile when it fits)."""
    h, w = shape
    th, tw = plan.tile
    if h <= th and w <= tw:
        need = (th, tw) if plan.fixed else (max(h, plan.min_size), max(w, plan.min_size))
        return [_Tile(index, slice(0, h), slice(0, w), need, None)]
    stride = 1
    if not plan.fixed:
        th, tw = min(th, h), min(tw, w)
        if min(th, tw) - plan.stride > 2 * plan.overlap:
            stride = plan.stride
            th, tw = aligned_tile(h, th, stride), aligned_tile(w, tw, stride)
    tiles = []
    for r in tile_starts(h, th, plan.overlap, stride):
        for s in tile_starts(w, tw, plan.overlap, stride):
            rh, rw = min(th, h - r), min(tw, w - s)
            need = (th, tw) if plan.fixed else (max(rh, plan.min_size), max(rw, plan.min_size))
            wr = _ramp(rh, plan.overlap, r == 0, r + th >= h)
            wc = _ramp(rw, plan.overlap, s == 0, s + tw >= w)
            tiles.append(_Tile(index, slice(r, r + rh), slice(s, s + rw), need, wr[:, None] * wc[None, :]))
    return tiles


def run_tiled_many(run: RunFn, images: Sequence[np.ndarray], plan: TilePlan, max_batch: int = 1, multiple: int = 1) -> list[np.ndarray]:
    """Denoise several float32 ``B x C x H x W`` arrays (sizes may differ) with ``run``.

    Every image is padded/tiled per ``plan``; the samples of all tiles are grouped by padded
    size and sent to ``run`` as ``n x C x h x w`` batches of at most ``max_batch`` samples (tiles
    of one image and of different images share a batch when their size matches). ``multiple``:
    the batch sizes ``run`` accepts are multiples of it (a fixed-batch graph); a short last batch
    is filled with copies of its last sample, whose results are dropped. Results are blended
    straight into each image's output, so memory holds one batch of tiles at a time.
    Equal to :func:`run_tiled` on each image, up to float rounding of the blend's sums.
    """
    if max_batch < 1 or multiple < 1:
        raise ValueError(f"max_batch and multiple must be >= 1, got {max_batch}, {multiple}")
    size = max(multiple, max_batch // multiple * multiple)
    outs = [np.zeros(x.shape, dtype=np.float32) for x in images]
    weights = [np.zeros(x.shape[-2:], dtype=np.float32) for x in images]
    groups: dict[tuple[int, int], list[tuple[_Tile, int]]] = {}
    for i, x in enumerate(images):
        for tile in _plan_tiles(i, x.shape[-2:], plan):
            groups.setdefault(tile.padded, []).extend((tile, j) for j in range(x.shape[0]))
    for padded, samples in groups.items():
        for k in range(0, len(samples), size):
            chunk = samples[k : k + size]
            fill = chunk + [chunk[-1]] * (-len(chunk) % multiple)
            batch = np.concatenate([
                _pad_to(images[t.image][j : j + 1, :, t.rows, t.cols], *padded) for t, j in fill
            ])
            y = run(np.ascontiguousarray(batch, dtype=np.float32))
            for n, (t, j) in enumerate(chunk):
                rows, cols = _crop_box(padded, (t.rows.stop - t.rows.start, t.cols.stop - t.cols.start))
                part = y[n, :, rows, cols]
                if t.weight is None:
                    outs[t.image][j] = part
                    continue
                outs[t.image][j, :, t.rows, t.cols] += part * t.weight
                if j == 0:
                    weights[t.image][t.rows, t.cols] += t.weight
    for i, tiles_used in enumerate(weights):
        if tiles_used.any():
            outs[i] /= tiles_used
    return outs


def run_tiled(run: RunFn, x: np.ndarray, plan: TilePlan, max_batch: int = 1, multiple: int = 1) -> np.ndarray:
    """Denoise ``x`` (float32 ``B x C x H x W``) with ``run``, padding and tiling per ``plan``
    (batches of at most ``max_batch`` samples, see :func:`run_tiled_many`)."""
    return run_tiled_many(run, [x], plan, max_batch=max_batch, multiple=multiple)[0]
