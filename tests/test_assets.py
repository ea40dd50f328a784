"""The shipped models: each loads, is what its name says, denoises a real photo, and its FP16 plan holds."""

from __future__ import annotations

import numpy as np
import pytest

from n3deploy import shipped_model_path
from n3deploy.assets import DEFAULT_MODEL, SHIPPED_MODELS, default_model_path
from n3deploy.backends import load_backend
from n3deploy.checkpoint import read_checkpoint_header
from n3deploy.errors import ModelFileError
from n3deploy.evaluate import add_noise, image_rng, psnr
from n3deploy.models import get_model


@pytest.fixture(scope="module")
def noisy_photo() -> tuple[np.ndarray, np.ndarray]:
    from skimage import data

    clean = data.camera()[160:256, 200:296].astype(np.float32)[None] / 255  # 1 x 96 x 96
    return clean, add_noise(clean, 25.0, image_rng(0, 0))


@pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))
def test_shipped_model_is_its_registry_entry_and_denoises(name, noisy_photo):
    entry = get_model(name)
    path = shipped_model_path(name)
    config, meta = read_checkpoint_header(path)
    assert config == entry.model_config() and meta["sigma"] == entry.sigma
    assert meta.get("sigma_range") == (list(entry.sigma_range) if entry.blind else None)
    assert meta["val_psnr"] > 27.5  # validation at sigma=25 for every shipped model
    clean, noisy = noisy_photo
    fp32 = load_backend(path, "torch")
    out = fp32.run(noisy[None])[0]
    assert psnr(clean, out) > psnr(clean, noisy) + 7
    # the FP16 precision plan (what the FP16 graph and a GPU run) costs nothing measurable
    fp16 = load_backend(path, "torch", precision="fp16").run(noisy[None])[0]
    assert abs(psnr(clean, fp16) - psnr(clean, out)) <= 0.02


def test_default_model_is_a_shipped_tiny_one():
    assert get_model(DEFAULT_MODEL).preset == "tiny" and default_model_path() == shipped_model_path(DEFAULT_MODEL)


def test_unknown_shipped_model_names_the_shipped_ones():
    with pytest.raises(ModelFileError, match="tiny-sigma25, paper-sigma25"):
        shipped_model_path("dncnn")
