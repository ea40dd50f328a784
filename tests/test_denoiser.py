"""The Denoiser API: any shape/dtype round-trips, bad input raises documented errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from n3deploy import Denoiser, N3Net, N3NetConfig, save_checkpoint
from n3deploy.errors import InvalidImageError, ModelFileError


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = N3NetConfig(dncnn_features=8, dncnn_depth=3, embed_features=8, embed_depth=2, k=2, window=5)
    return save_checkpoint(N3Net(config), tmp_path_factory.mktemp("m") / "tiny.safetensors", sigma=25)


@pytest.fixture(scope="module")
def denoiser(tiny_checkpoint):
    return Denoiser(tiny_checkpoint, backend="torch", tile=64, overlap=16)


@pytest.mark.parametrize("shape", [(1, 1), (7, 300), (64, 64), (150, 97), (40, 50, 3), (33, 20, 4), (20, 30, 1)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_shape_and_dtype_round_trip(denoiser, shape, dtype):
    rng = np.random.default_rng(0)
    if dtype == np.float32:
        image = rng.random(shape, dtype=np.float32)
    else:
        image = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)
    out = denoiser.denoise(image)
    assert out.shape == image.shape and out.dtype == image.dtype
    if dtype == np.float32:
        assert out.min() >= 0 and out.max() <= 1


def test_batches_as_lists_and_arrays(denoiser):
    rng = np.random.default_rng(1)
    images = [rng.random((30, 40), dtype=np.float32), rng.random((50, 20, 3), dtype=np.float32)]
    outs = denoiser.denoise(images)
    assert [o.shape for o in outs] == [(30, 40), (50, 20, 3)]
    batch = rng.integers(0, 255, size=(5, 32, 32), dtype=np.uint8)
    out = denoiser.denoise(batch)
    assert out.shape == batch.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[2], denoiser.denoise(batch[2]))


def test_rgb_channels_are_denoised_independently_by_a_gray_model(denoiser):
    rng = np.random.default_rng(2)
    rgb = rng.random((48, 40, 3), dtype=np.float32)
    out = denoiser.denoise(rgb)
    np.testing.assert_allclose(out[..., 1], denoiser.denoise(np.ascontiguousarray(rgb[..., 1])), atol=1e-6)


def test_alpha_is_kept(denoiser):
    rgba = np.random.default_rng(3).random((32, 32, 4), dtype=np.float32)
    np.testing.assert_array_equal(denoiser.denoise(rgba)[..., 3], rgba[..., 3])


def test_tiled_and_whole_image_agree(tiny_checkpoint):
    rng = np.random.default_rng(4)
    image = np.clip(0.5 + 0.1 * rng.standard_normal((200, 230)), 0, 1).astype(np.float32)
    whole = Denoiser(tiny_checkpoint, backend="torch", tile=512).denoise(image)
    tiled = Denoiser(tiny_checkpoint, backend="torch", tile=96, overlap=32).denoise(image)
    mse = float(np.mean((whole - tiled) ** 2))
    assert mse < 1e-5


def test_tiles_cost_no_psnr_on_a_noisy_photo():
    """The shipped model on a noisy photo: 128-px tiles and the whole image agree within 0.01 dB."""
    from skimage import data
    from skimage.metrics import peak_signal_noise_ratio as psnr

    from n3deploy import default_model_path

    clean = data.camera()[96:352, 128:384].astype(np.float32) / 255
    noise = np.float32(25 / 255) * np.random.default_rng(0).standard_normal(clean.shape, dtype=np.float32)
    noisy = np.clip(clean + noise, 0, 1)
    whole = Denoiser(default_model_path(), backend="torch", tile=512).denoise(noisy)
    tiled_denoiser = Denoiser(default_model_path(), backend="torch", tile=128)
    tiled = tiled_denoiser.denoise(noisy)
    assert tiled_denoiser.plan.tile == (128, 128) and tiled_denoiser.plan.overlap > 0
    whole_db, tiled_db = psnr(clean, whole, data_range=1), psnr(clean, tiled, data_range=1)
    assert whole_db > psnr(clean, noisy, data_range=1) + 6  # it really denoises
    assert abs(whole_db - tiled_db) <= 0.01, (whole_db, tiled_db)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 5), np.uint8), "empty"),
        (np.zeros((4,), np.uint8), "H x W"),
        (np.zeros((2, 3, 4, 5, 6), np.uint8), "H x W"),
        (np.full((20, 20), np.nan, np.float32), "NaN"),
        (np.full((20, 20), 2.0, np.float32), "\\[0, 1\\]"),
        (np.zeros((20, 20), np.float64), "unsupported dtype"),
        (np.zeros((20, 20), np.int32), "unsupported dtype"),
        (np.zeros((2, 20, 20, 2), np.uint8), "1, 3 or 4 channels"),
        ("not an image", "numpy array"),
    ],
)
def test_bad_input_raises_one_line_errors(denoiser, image, message):
    with pytest.raises(InvalidImageError, match=message) as info:
        denoiser.denoise(image)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_unreadable_model_files(tmp_path):
    with pytest.raises(ModelFileError):
        Denoiser(tmp_path / "absent.safetensors")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08garbage")
    with pytest.raises((ModelFileError, ValueError)):
        Denoiser(bad)


def test_concurrent_calls_from_threads(denoiser):
    rng = np.random.default_rng(5)
    images = [rng.random((40, 40), dtype=np.float32) for _ in range(4)]
    expected = [denoiser.denoise(im) for im in images]
    results = [None] * 4

    def work(i):
        results[i] = denoiser.denoise(images[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(results, expected):
        np.testing.assert_allclose(a, b, atol=1e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    image=st.one_of(
        hnp.arrays(st.sampled_from([np.uint8, np.uint16]), hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=40)),
        hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=40),
                   elements=st.one_of(st.floats(-1, 2, width=32), st.sampled_from([np.nan, np.inf, 0.5]))),
        hnp.arrays(st.sampled_from([np.float64, np.int16, np.bool_]), hnp.array_shapes(max_dims=3, max_side=8)),
    )
)
def test_property_result_or_documented_error(denoiser, image):
    try:
        out = denoiser.denoise(image)
    except InvalidImageError:
        return
    assert isinstance(out, np.ndarray)
    assert out.shape == image.shape and out.dtype == image.dtype


def test_batched_tiles_equal_one_tile_at_a_time(tiny_checkpoint):
    """batch_tiles=4: same-size tiles of a list of mixed-size images (gray and RGB, edge tiles of
    other sizes) go to the backend together; the results match batch_tiles=1."""
    rng = np.random.default_rng(11)
    images = [rng.random(s, dtype=np.float32) for s in [(150, 170), (97, 120, 3), (40, 30), (64, 64)]]
    one = Denoiser(tiny_checkpoint, backend="torch", tile=64, overlap=16)
    many = Denoiser(tiny_checkpoint, backend="torch", tile=64, overlap=16, batch_tiles=4)
    calls = []
    run = many._backend.run
    many._backend.run = lambda x: (calls.append(x.shape[0]), run(x))[1]
    expected, got = one.denoise(images), many.denoise(images)
    assert max(calls) == 4
    for a, b in zip(expected, got):
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-6
    np.testing.assert_allclose(many.denoise(images[1]), expected[1], atol=1e-6)


def test_batch_tiles_must_be_positive(tiny_checkpoint):
    with pytest.raises(ValueError, match="batch_tiles"):
        Denoiser(tiny_checkpoint, backend="torch", batch_tiles=0)
