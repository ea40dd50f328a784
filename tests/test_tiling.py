"""Padding and blended tiling: any image size reaches the model in an accepted shape."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from n3deploy.tiling import TilePlan, run_tiled, tile_starts


def recording(fn, shapes):
    def run(x):
        shapes.append(x.shape)
        return fn(x)

    return run


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), fixed=st.booleans())
def test_pointwise_models_are_reproduced_exactly_at_any_size(h, w, fixed):
    rng = np.random.default_rng(h * 1000 + w)
    x = rng.random((2, 1, h, w), dtype=np.float32)
    shapes = []
    plan = TilePlan(tile=(64, 80), overlap=16, min_size=15, fixed=fixed)
    out = run_tiled(recording(lambda t: t**2, shapes), x, plan)
    assert out.shape == x.shape
    np.testing.assert_allclose(out, x**2, rtol=1e-5, atol=1e-6)
    for s in shapes:
        if fixed:
            assert s[-2:] == (64, 80)
        else:
            assert 15 <= s[-2] <= 64 and 15 <= s[-1] <= 80


def test_tiles_cover_with_the_requested_overlap():
    assert tile_starts(100, 100, 10) == [0]
    starts = tile_starts(1000, 256, 64)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 256 - 64 for a, b in zip(starts, starts[1:]))


@settings(max_examples=30, deadline=None)
@given(h=st.integers(97, 400), w=st.integers(97, 400))
def test_tiles_keep_the_models_patch_grid(h, w):
    """With stride 5, every tile starts on a multiple of 5 and has the image's size modulo 5,
    so the model pads it like the whole image and sees the same patches."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    x = np.stack([rows, cols]).astype(np.float32)[None]  # 1 x 2 x H x W: absolute coordinates
    seen = []
    run = lambda t: seen.append((int(t[0, 0, 0, 0]), int(t[0, 1, 0, 0]), *t.shape[-2:])) or t  # noqa: E731
    out = run_tiled(run, x, TilePlan(tile=(96, 96), overlap=24, min_size=15, stride=5))
    np.testing.assert_allclose(out, x, rtol=1e-6)
    assert len(seen) > 1
    for top, left, th, tw in seen:
        assert top % 5 == 0 and left % 5 == 0, (top, left)
        assert th % 5 == h % 5 and tw % 5 == w % 5, (th, tw)
        assert 2 * 24 < min(th, tw) <= 96


def test_blending_hides_tile_seams_of_a_local_filter():
    """A 5x5 box filter: tiles differ from the whole image only near their own borders, and
    the linear blend keeps the difference far below the filter's own effect."""
    from scipy.ndimage import uniform_filter

    rng = np.random.default_rng(0)
    x = rng.random((1, 1, 200, 230), dtype=np.float32)
    filt = lambda t: uniform_filter(t, size=(1, 1, 5, 5), mode="reflect")
    whole = filt(x)
    tiled = run_tiled(filt, x, TilePlan(tile=(96, 96), overlap=32))
    assert np.abs(tiled - whole).max() < 0.1 * np.abs(whole - x).max()


def test_bad_plans_are_refused():
    with pytest.raises(ValueError):
        TilePlan(tile=(64, 64), overlap=40)


def _local_filter(x: np.ndarray) -> np.ndarray:
    """A per-sample 3x3 box filter (depends on tile content and edges, like a real denoiser)."""
    p = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)], mode="edge")
    h, w = x.shape[-2:]
    return sum(p[..., i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9


@pytest.mark.parametrize("fixed", [False, True])
def test_batched_tiles_equal_one_tile_at_a_time(fixed):
    """Same-size tiles of several images of mixed sizes (edge tiles of other sizes among them)
    batched up to max_batch give what one tile per call gives; no batch exceeds max_batch."""
    from n3deploy.tiling import run_tiled_many

    rng = np.random.default_rng(7)
    images = [rng.random((b, 1, h, w), dtype=np.float32) for b, h, w in [(1, 150, 170), (3, 97, 203), (1, 40, 30), (2, 64, 80)]]
    plan = TilePlan(tile=(64, 80), overlap=16, min_size=15, fixed=fixed, stride=1 if fixed else 5)
    one_shapes, many_shapes = [], []
    single = [run_tiled(recording(_local_filter, one_shapes), x, plan) for x in images]
    batched = run_tiled_many(recording(_local_filter, many_shapes), images, plan, max_batch=4)
    assert max(s[0] for s in one_shapes) == 1
    assert max(s[0] for s in many_shapes) == 4 and len(many_shapes) < len(one_shapes)
    assert sum(s[0] for s in many_shapes) == len(one_shapes)
    assert len({s[-2:] for s in many_shapes}) == len({s[-2:] for s in one_shapes})
    for a, b in zip(single, batched):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-6


def test_a_fixed_batch_gets_exactly_its_batch():
    """multiple=k: every call is a multiple of k; the filler samples' results are dropped."""
    from n3deploy.tiling import run_tiled_many

    rng = np.random.default_rng(3)
    images = [rng.random((1, 1, 150, 170), dtype=np.float32), rng.random((3, 1, 50, 60), dtype=np.float32)]
    plan = TilePlan(tile=(64, 80), overlap=16, min_size=15, fixed=True)
    shapes = []
    out = run_tiled_many(recording(_local_filter, shapes), images, plan, max_batch=1, multiple=2)
    assert all(s[0] == 2 for s in shapes)
    for x, y in zip(images, out):
        np.testing.assert_allclose(y, run_tiled(_local_filter, x, plan), atol=1e-6)
