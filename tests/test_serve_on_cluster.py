"""``n3deploy serve --address``: deploy onto a Ray cluster that is already running, and leave it running.

The cluster is a real local Ray instance (2 CPUs) started in this test process; the server joins
it by its GCS address, on 127.0.0.1 with a random free port, and is stopped by the PID it was
started with (SIGINT). Stopping the server removes only its application: the cluster stays up.
"""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
httpclient = pytest.importorskip("tritonclient.http")

from serve_helpers import STOP_TIMEOUT_S, infer, start_server  # noqa: E402

from n3deploy import Denoiser  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """A running Ray cluster that this test owns (not the server): its GCS address."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning", namespace="n3deploy")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def test_serve_deploys_onto_an_existing_cluster_and_leaves_it_running(cluster, tiny_onnx, tmp_path):
    server = start_server(tiny_onnx.path, tmp_path / "serve.log", "--address", cluster, "--name", "n3net_cluster")
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        from skimage import data

        image = data.camera()[200:240, 200:256].astype(np.float32) / 255.0
        out = infer(client, image, model="n3net_cluster")  # the raw output: the Denoiser clips to [0, 1]
        np.testing.assert_allclose(np.clip(out, 0.0, 1.0), Denoiser(tiny_onnx.path).denoise(image), atol=1e-5)
        assert "n3net_cluster" in serve.status().applications  # deployed on *this* cluster
    finally:
        stop_s = server.stop()
    assert stop_s < STOP_TIMEOUT_S, server.log_tail()
    assert server.proc.returncode == 0, server.log_tail()
    assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 2  # the cluster is still up
    assert "n3net_cluster" not in serve.status().applications  # only the server's application went
