"""estimate_noise: accurate on photos with clipped noise, near zero on clean ones, cheap; the Denoiser's warning."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from n3deploy import Denoiser, estimate_noise, shipped_model_path
from n3deploy.errors import InvalidImageError, NoiseLevelWarning
from n3deploy.noise import estimate_noise_channels, is_far_from


def _photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {  # scikit-image's bundled photos, 256 px crops (gray and RGB)
        "camera": data.camera()[:256, 128:384],
        "coins": data.coins()[:256, :256],
        "moon": data.moon()[128:384, 128:384],
        "brick": data.brick()[:256, :256],
        "clock": data.clock()[:256, :256],
        "astronaut": data.astronaut()[:256, 128:384],
        "coffee": data.coffee()[:256, 200:456],
        "chelsea": data.chelsea()[:256, 100:356],
    }


def _noisy(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """uint8 with the noise rounded and clipped to [0, 255], as real files are."""
    noise = sigma * np.random.default_rng([seed, int(sigma)]).standard_normal(image.shape)
    return np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)


PHOTOS = _photos()


@pytest.mark.parametrize("sigma, bound", [(5, 1.0), (15, 1.5), (25, 1.5), (50, 2.0)])
def test_mean_absolute_error_on_photos_with_clipped_noise(sigma, bound):
    errors = [estimate_noise(_noisy(im, sigma, seed)) - sigma for im in PHOTOS.values() for seed in (0, 1)]
    assert np.mean(np.abs(errors)) <= bound, np.round(errors, 2)


def test_clean_photos_read_small():
    readings = [estimate_noise(im) for im in PHOTOS.values()]
    assert np.mean(readings) < 1.5 and max(readings) < 3.0, np.round(readings, 2)


def test_flat_image_reads_its_noise_exactly_enough():
    flat = np.full((128, 128), 128.0)
    assert abs(estimate_noise(_noisy(flat, 10, 0)) - 10) < 0.3
    assert estimate_noise(np.full((64, 64), 90, np.uint8)) == 0.0


def test_same_sigma_for_every_dtype():
    noisy = _noisy(PHOTOS["camera"], 25, 0)
    ref = estimate_noise(noisy)
    assert estimate_noise(noisy.astype(np.float32) / 255) == pytest.approx(ref, abs=1e-3)
    assert estimate_noise(noisy.astype(np.uint16) * 257) == pytest.approx(ref, abs=1e-3)
    assert estimate_noise(noisy[..., None]) == pytest.approx(ref, abs=1e-9)


def test_rgb_is_per_channel_and_the_mean_is_returned():
    rgb = PHOTOS["astronaut"].astype(np.float64)
    sigmas = (10.0, 20.0, 40.0)
    noisy = np.stack([_noisy(rgb[..., c], s, c) for c, s in enumerate(sigmas)], axis=-1)
    per_channel = estimate_noise_channels(noisy)
    assert np.allclose(per_channel, sigmas, atol=2.0), per_channel
    assert estimate_noise(noisy) == pytest.approx(np.mean(per_channel))
    rgba = np.concatenate([noisy, np.full(noisy.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    assert estimate_noise(rgba) == pytest.approx(estimate_noise(noisy))  # alpha ignored


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((5, 40), np.uint8), "at least 7x7"),
        (np.zeros((32, 32), np.int32), "unsupported dtype"),
        (np.full((32, 32), np.nan, np.float32), "NaN"),
        (np.zeros((32, 32, 2), np.uint8), "1, 3 or 4 channels"),
        ([[1, 2], [3, 4]], "numpy array"),
    ],
)
def test_bad_input_is_rejected(bad, match):
    with pytest.raises(InvalidImageError, match=match):
        estimate_noise(bad)


def test_far_means_outside_max_5_or_35_percent():
    assert not is_far_from(30, 25) and not is_far_from(16.5, 25) and is_far_from(15, 25) and is_far_from(34, 25)
    assert not is_far_from(50, 70) and is_far_from(45, 70)


@pytest.fixture(scope="module")
def tiny_sigma25() -> Denoiser:
    return Denoiser(shipped_model_path("tiny-sigma25"), backend="torch")


def test_sigma_model_warns_once_and_names_the_blind_model(tiny_sigma25):
    photo = PHOTOS["camera"][:96, :96]
    denoiser = Denoiser(tiny_sigma25._backend)  # a fresh Denoiser on the loaded backend
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        denoiser.denoise(_noisy(photo, 25, 0))  # at the model's sigma: no warning
        assert not caught
        denoiser.denoise(_noisy(photo, 50, 0))
        denoiser.denoise(_noisy(photo, 5, 0))  # once per Denoiser
    assert [w.category for w in caught] == [NoiseLevelWarning]
    assert issubclass(NoiseLevelWarning, UserWarning)
    message = str(caught[0].message)
    assert "sigma=25" in message and "tiny-blind" in message


def test_blind_model_never_warns(tiny_model, tmp_path):
    from n3deploy.checkpoint import save_checkpoint

    path = save_checkpoint(tiny_model, tmp_path / "blind.safetensors", sigma=None, sigma_range=[0.0, 55.0])
    denoiser = Denoiser(path, backend="torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        denoiser.denoise(_noisy(PHOTOS["camera"][:64, :64], 50, 0))


def test_estimate_is_cheap_next_to_denoising(tiny_sigma25):
    noisy = _noisy(PHOTOS["camera"], 25, 0)  # 256 x 256

    def best_of_5(fn) -> float:  # CPU time of this process: steadier than wall time on shared cores
        times = []
        for _ in range(5):
            t0 = time.process_time()
            fn(noisy)
            times.append(time.process_time() - t0)
        return min(times)

    estimate, denoise = best_of_5(estimate_noise), best_of_5(tiny_sigma25.denoise)
    assert estimate < 0.3 * denoise, (estimate, denoise)  # measured ~5-10% (2 shared cores)


def test_denoise_report_records_carry_the_estimate(tiny_sigma25, tmp_path):
    import json

    from n3deploy.batch.job import FileTask, process_file
    from n3deploy.imageio import write_image

    src = tmp_path / "in.png"
    write_image(src, _noisy(PHOTOS["coins"][:64, :64], 25, 0))
    record = process_file(Denoiser(tiny_sigma25._backend), FileTask(str(src), str(tmp_path / "out.png")))
    assert record.status == "done"
    assert record.sigma_estimate == pytest.approx(estimate_noise(_noisy(PHOTOS["coins"][:64, :64], 25, 0)), abs=0.01)
    assert abs(record.sigma_estimate - 25) < 4
    assert json.loads(record.to_json())["sigma_estimate"] == record.sigma_estimate


def test_inspect_images_prints_each_estimate_and_marks_far_ones(tmp_path, capsys):
    from n3deploy.cli import main
    from n3deploy.commands.inspect import format_noise_estimates
    from n3deploy.imageio import write_image

    photo = PHOTOS["coins"][:96, :96]
    for sigma in (5, 25, 50):
        write_image(tmp_path / f"s{sigma:02d}.png", _noisy(photo, sigma, 0))
    assert main(["inspect", "--images", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    readings = {ln.split()[0]: float(ln.split()[1]) for ln in lines[1:]}
    assert readings == pytest.approx({"s05.png": 5, "s25.png": 25, "s50.png": 50}, abs=3)
    table = format_noise_estimates(tmp_path, 25.0)  # what `inspect MODEL.onnx --images` adds
    marked = [ln.split()[0] for ln in table.splitlines()[1:] if "far: use the blind model" in ln]
    assert marked == ["s05.png", "s50.png"]


def test_gamma_quantile_matches_scipy():
    from scipy.stats import gamma

    from n3deploy.noise import _gamma_quantile

    for q, shape, scale in [(1 - 1e-6, 17.5, 4.0), (0.5, 3.0, 1.0), (0.99, 0.7, 2.0), (1 - 1e-6, 100.0, 0.5)]:
        assert _gamma_quantile(q, shape, scale) == pytest.approx(gamma.ppf(q, shape, scale=scale), rel=1e-9)
