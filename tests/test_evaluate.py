"""Evaluation: the noise protocol, the metrics, the report and `n3deploy eval`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from n3deploy.evaluate import add_noise, evaluate_arrays, evaluate_images, image_rng, psnr, ssim

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """Three 40x40 grayscale crops of scikit-image's camera, written out of name order."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("eval_images")
    cam = data.camera()
    for i in (2, 0, 1):
        Image.fromarray(cam[100 + 50 * i : 140 + 50 * i, 200:240]).save(root / f"img{i}.png")
    return root


def clean_images(folder: Path) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(p), dtype=np.float32)[None] / 255.0 for p in sorted(folder.glob("*.png"))]


def identity(x: np.ndarray) -> np.ndarray:
    return x


# ----------------------------------------------------------------------- protocol


def test_add_noise_is_float_unclipped_and_scaled():
    clean = np.full((1, 64, 64), 0.5, dtype=np.float32)
    noisy = add_noise(clean, 25, np.random.default_rng(0))
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape
    assert abs(float((noisy - clean).std()) - 25 / 255) < 0.003
    edge = add_noise(np.zeros((1, 32, 32)), 25, np.random.default_rng(0))
    assert edge.min() < 0  # not clipped
    assert np.array_equal(add_noise(clean, 0, np.random.default_rng(0)), clean)
    with pytest.raises(ValueError):
        add_noise(clean, -1, np.random.default_rng(0))


def test_add_noise_matches_documented_formula():
    clean = np.random.default_rng(5).random((1, 16, 16))
    expected = (clean + 25 / 255 * np.random.default_rng([7, 3]).standard_normal(clean.shape)).astype(np.float32)
    assert np.array_equal(add_noise(clean, 25, image_rng(7, 3)), expected)


def test_each_image_has_its_own_generator(image_dir):
    """Image i's noise depends only on (seed, i): evaluating a prefix gives the same numbers."""
    images = clean_images(image_dir)
    full = evaluate_arrays(identity, images, 25, seed=0)
    prefix = evaluate_arrays(identity, images[:2], 25, seed=0)
    assert [r.psnr for r in full.images[:2]] == [r.psnr for r in prefix.images]
    assert full.images[0].psnr != full.images[1].psnr
    other_seed = evaluate_arrays(identity, images, 25, seed=1)
    assert other_seed.mean_psnr != full.mean_psnr


def test_sorted_order_and_noisy_psnr(image_dir):
    report = evaluate_images(identity, image_dir, 25, seed=0)
    assert [r.name for r in report.images] == ["img0.png", "img1.png", "img2.png"]
    # unclipped noisy PSNR ~ 20*log10(255/25); the clipped identity output is at least as good
    assert report.mean_psnr_noisy == pytest.approx(20 * math.log10(255 / 25), abs=0.2)
    assert all(r.psnr >= r.psnr_noisy for r in report.images)


def test_output_is_clipped_before_metrics():
    clean = np.full((1, 32, 32), 0.5, dtype=np.float32)
    report = evaluate_arrays(lambda x: x + 10.0, [clean], 25)  # clipped to 1.0 -> error 0.5
    assert report.mean_psnr == pytest.approx(20 * math.log10(2), abs=1e-9)


def test_metrics_are_scikit_image(image_dir):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    clean = clean_images(image_dir)[0]
    est = np.clip(clean + 0.05 * np.random.default_rng(0).standard_normal(clean.shape), 0, 1)
    assert psnr(clean, est) == pytest.approx(peak_signal_noise_ratio(clean[0].astype(float), est[0], data_range=1))
    assert ssim(clean, est) == pytest.approx(structural_similarity(clean[0].astype(float), est[0], data_range=1))
    rgb = np.random.default_rng(1).random((3, 24, 24))
    assert ssim(rgb, rgb) == pytest.approx(1.0)


def test_report_json(image_dir, tmp_path):
    report = evaluate_images(identity, image_dir, 15, seed=3)
    path = report.write_json(tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["sigma"] == 15 and data["seed"] == 3 and data["num_images"] == 3
    assert data["mean_psnr"] == pytest.approx(np.mean([im["psnr"] for im in data["images"]]))
    assert "default_rng([seed, i])" in data["protocol"]


def test_denoiser_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="returned shape"):
        evaluate_arrays(lambda x: x[:, :, :8], [np.zeros((1, 16, 16), np.float32)], 25)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    from n3deploy.checkpoint import save_checkpoint
    from n3deploy.config import N3NetConfig
    from n3deploy.model import N3Net

    torch.manual_seed(0)
    cfg = N3NetConfig(interm_channels=4, dncnn_features=8, dncnn_depth=3, embed_features=8, embed_depth=2,
                      embed_channels=4, k=2, window=7)
    path = tmp_path_factory.mktemp("ckpt") / "small.safetensors"
    save_checkpoint(N3Net(cfg).eval(), path, sigma=25)
    return path


def test_cli_eval_matches_library(image_dir, small_checkpoint, tmp_path):
    from n3deploy.cli import main
    from n3deploy.backends import load_backend

    out = tmp_path / "eval.json"
    rc = main(["eval", "--model", str(small_checkpoint), "--images", str(image_dir), "--json", str(out), "--quiet"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["sigma"] == 25 and data["seed"] == 0  # sigma from the checkpoint's metadata
    backend = load_backend(small_checkpoint, "torch")
    expected = evaluate_images(backend.run, image_dir, 25, seed=0)
    assert data["mean_psnr"] == pytest.approx(expected.mean_psnr, abs=1e-6)
    assert [im["name"] for im in data["images"]] == ["img0.png", "img1.png", "img2.png"]


def test_cli_eval_help_documents_protocol():
    proc = subprocess.run([sys.executable, "-m", "n3deploy.cli", "eval", "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0
    assert "default_rng([SEED, i])" in proc.stdout and "clipped to [0,1]" in proc.stdout


def test_default_model_is_shipped():
    """The embedded default model exists, is small, is the blind checkpoint and denoises."""
    torch = pytest.importorskip("torch")
    from skimage import data

    from n3deploy.assets import default_model_path
    from n3deploy.checkpoint import load_checkpoint

    path = default_model_path()
    assert path.stat().st_size < 5 * 2**20
    model = load_checkpoint(path)
    assert model.metadata["sigma"] is None and model.metadata["sigma_range"] == [0.0, 55.0]
    clean = data.camera()[200:264, 200:264].astype(np.float32)[None] / 255.0

    def denoise(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    report = evaluate_arrays(denoise, [clean], 25)
    assert report.mean_psnr > report.mean_psnr_noisy + 5  # a trained denoiser, not an untrained net
