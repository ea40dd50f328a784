"""Shared fixtures: a tiny random N3Net, its checkpoint, its ONNX exports, small real photos.

Real images come from scikit-image's bundled data (never /work/shared), cropped small. The ONNX
exports are session-scoped: a fixed 64x64 tiny export takes ~10 s on 2 cores, so every test file
that needs one shares it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

TINY_SIGMA = 25.0
EXPORT_SIZE = 64  # fixed height/width of the shared tiny exports


@pytest.fixture(scope="session")
def tiny_model():
    """An eval-mode ``N3NetConfig.tiny()`` with seeded random weights and ``metadata['sigma']``."""
    import torch

    from n3deploy.config import N3NetConfig
    from n3deploy.model import N3Net

    torch.manual_seed(1234)
    model = N3Net(N3NetConfig.tiny()).eval()
    model.metadata = {"sigma": TINY_SIGMA, "provenance": "tests: random weights"}
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory) -> Path:
    """``tiny_model`` saved as an n3deploy ``.safetensors`` checkpoint."""
    from n3deploy.checkpoint import save_checkpoint

    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", sigma=TINY_SIGMA)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory):
    """FP32 ONNX export of ``tiny_model`` at a fixed 1x1x64x64 (an :class:`ExportResult`)."""
    from n3deploy.export.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return export_onnx(tiny_model, path, height=EXPORT_SIZE, width=EXPORT_SIZE, progress=False)


@pytest.fixture(scope="session")
def tiny_onnx_fp16(tiny_model, tmp_path_factory):
    """Mixed-precision FP16 ONNX export of ``tiny_model`` at a fixed 1x1x64x64."""
    from n3deploy.export.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("onnx16") / "tiny_fp16.onnx"
    return export_onnx(tiny_model, path, height=EXPORT_SIZE, width=EXPORT_SIZE, fp16=True, progress=False)


def _photo_crops(size: int) -> list[tuple[str, np.ndarray]]:
    from skimage import data

    crops = [
        ("camera", data.camera()[100 : 100 + size, 200 : 200 + size]),
        ("moon", data.moon()[200 : 200 + size, 200 : 200 + size]),
        ("coins", data.coins()[50 : 50 + size, 50 : 50 + size]),
    ]
    return [(name, (img.astype(np.float32) / 255.0)[None]) for name, img in crops]


@pytest.fixture(scope="session")
def photos() -> list[tuple[str, np.ndarray]]:
    """Three real grayscale photos from scikit-image, cropped to 1 x 64 x 64 float32 in [0, 1]."""
    return _photo_crops(EXPORT_SIZE)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """A folder of three 80x80 grayscale PNG crops of scikit-image photos."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    for name, img in _photo_crops(80):
        Image.fromarray(np.round(img[0] * 255).astype(np.uint8)).save(folder / f"{name}.png")
    return folder
