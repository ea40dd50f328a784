"""The remote backend: ``Denoiser(url, backend="remote")`` against a real ``n3deploy serve`` equals the local one.

Uses the session's server (tests/serve_helpers.py); the Denoiser tiles locally with the limits and
patch grid the server reports and sends each tile batch as one binary request.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("tritonclient.http")

from serve_helpers import shared_server, stop_shared_server  # noqa: E402

from n3deploy import Denoiser  # noqa: E402
from n3deploy.backends import load_backend  # noqa: E402
from n3deploy.errors import BackendUnavailableError, InvalidImageError  # noqa: E402


@pytest.fixture(scope="session")
def server(tiny_onnx, tmp_path_factory):
    srv = shared_server(tiny_onnx.path, tmp_path_factory.mktemp("serve"))
    yield srv
    stop_shared_server()


def _photo(h: int, w: int) -> np.ndarray:
    from skimage import data

    return data.camera()[100 : 100 + h, 150 : 150 + w]


def test_remote_denoiser_equals_local(server, tiny_onnx):
    remote = Denoiser(server.url, backend="remote")
    local = Denoiser(tiny_onnx.path)
    assert remote.backend == "remote" and remote.channels == 1 and remote.sigma == local.sigma
    assert remote.plan.stride == 5  # the patch grid, from the server's model config
    for image in (_photo(70, 90), _photo(130, 150).astype(np.float32) / 255.0):
        out = remote.denoise(image)
        assert out.dtype == image.dtype and out.shape == image.shape
        assert np.abs(out.astype(np.float64) - local.denoise(image).astype(np.float64)).max() <= (1e-5 if out.dtype == np.float32 else 0)


def test_remote_backend_reports_limits_and_sends_batches(server, tiny_onnx):
    backend = load_backend(server.url, "remote", model_name="n3net")
    limits = backend.input_shape_limits
    assert (limits.channels, limits.batch, limits.height, limits.width) == (1, None, None, None)
    x = np.random.default_rng(0).random((3, 1, 40, 40), dtype=np.float32)  # one request of three tiles
    local = load_backend(tiny_onnx.path)
    from n3deploy.tiling import run_tiled

    expected = run_tiled(local.run, x, Denoiser(tiny_onnx.path).plan)
    assert np.abs(backend.run(x) - expected).max() <= 1e-5


def test_remote_errors_are_clear(server):
    backend = load_backend(server.url, "remote")
    with pytest.raises(InvalidImageError, match="channels"):  # checked locally, by Backend.run
        backend.run(np.zeros((1, 3, 20, 20), np.float32))
    with pytest.raises(InvalidImageError, match="max-pixels"):  # refused by the server (413)
        backend.run(np.zeros((1, 1, 600, 600), np.float32))
    with pytest.raises(BackendUnavailableError, match="not ready|unknown model"):
        load_backend(server.url, "remote", model_name="nope")
