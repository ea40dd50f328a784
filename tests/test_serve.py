"""``n3deploy serve``: a real server (Ray Serve on 127.0.0.1, random free port) serving the tiny graph.

One server per test session (tests/serve_helpers.py), started as a subprocess and stopped by its
PID with SIGINT in the last test, which asserts it exits within 30 s. Results are compared with the
in-process Denoiser on the same graph.
"""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("ray.serve")
httpclient = pytest.importorskip("tritonclient.http")

from serve_helpers import READY_TIMEOUT_S, STOP_TIMEOUT_S, shared_server, stop_shared_server  # noqa: E402
from serve_helpers import infer as _infer  # noqa: E402

from n3deploy import Denoiser  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="session")
def server(tiny_onnx, tmp_path_factory):
    srv = shared_server(tiny_onnx.path, tmp_path_factory.mktemp("serve"))
    yield srv
    stop_shared_server()


@pytest.fixture(scope="module")
def local(tiny_onnx):
    return Denoiser(tiny_onnx.path)


def _photos() -> list[np.ndarray]:
    """Real grayscale photo crops of mixed sizes (float32 in [0, 1], H x W)."""
    from skimage import data

    cam, coins = data.camera(), data.coins()
    crops = [cam[40:90, 60:130], cam[200:264, 200:264], coins[10:123, 20:117], cam[300:340, 100:250], coins[0:20, 0:24]]
    return [(c.astype(np.float32) / 255.0) for c in crops]


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def test_ready_within_bound_and_describes_the_model(server):
    assert server.ready_s < READY_TIMEOUT_S
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("n3net")
    meta = client.get_model_metadata("n3net")
    assert meta["inputs"] == [{"name": "noisy", "datatype": "FP32", "shape": [-1, 1, -1, -1]}]
    assert meta["outputs"] == [{"name": "denoised", "datatype": "FP32", "shape": [-1, 1, -1, -1]}]
    assert json.loads(client.get_model_config("n3net")["parameters"]["n3deploy_config"]["string_value"])["stride"] == 5
    assert not client.is_model_ready("other")


def test_tritonclient_mixed_sizes_from_threads_equal_in_process_denoiser(server, local):
    photos = _photos()
    expected = [local.denoise(p) for p in photos]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            for i in range(len(photos)):
                j = (i + t) % len(photos)
                results[t, j] = _infer(client, photos[j], binary=(t % 2 == 0))  # JSON tensors from odd threads
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=240)
    assert not errors, errors
    assert len(results) == 3 * len(photos)
    for (t, j), out in results.items():
        assert out.shape == photos[j].shape
        # the v2 endpoint returns the model's raw output (as Triton does); the Denoiser clips to [0, 1]
        assert np.abs(np.clip(out, 0, 1) - expected[j]).max() <= TOL, (t, j)


def test_eight_concurrent_clients_get_no_errors(server, local):
    image = _photos()[1]
    expected = local.denoise(image)
    outcomes: list[object] = []

    def client_run() -> None:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        for _ in range(2):
            try:
                outcomes.append(float(np.abs(np.clip(_infer(client, image), 0, 1) - expected).max()))
            except Exception as exc:  # noqa: BLE001 - counted as an error
                outcomes.append(exc)

    threads = [threading.Thread(target=client_run) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=240)
    errors = [o for o in outcomes if not isinstance(o, float)]
    assert len(outcomes) == 16 and errors == []
    assert max(outcomes) <= TOL


def _json_request(shape, data, datatype="FP32") -> bytes:
    return json.dumps({"inputs": [{"name": "noisy", "shape": list(shape), "datatype": datatype, "data": data}]}).encode()


def _binary_request(x: np.ndarray) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": "noisy", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return header + x.astype("<f4").tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def test_bad_requests_get_4xx_with_a_message_and_the_server_keeps_serving(server, local):
    infer_url = f"{server.url}/v2/models/n3net/infer"
    good = np.full((1, 1, 24, 24), 0.5, np.float32)
    nan = good.copy()
    nan[0, 0, 3, 3] = np.nan
    rgb = np.zeros((1, 3, 24, 24), np.float32)
    cases = [
        ("garbage JSON", infer_url, b"{not json", {}, 400, "JSON"),
        ("NaN tensor", infer_url, *_binary_request(nan), 400, "NaN"),
        ("1x3xHxW for a grey model", infer_url, *_binary_request(rgb), 400, "channel"),
        ("wrong dtype", infer_url, _json_request((1, 1, 2, 2), [0.1] * 4, "FP64"), {}, 400, "FP32"),
        ("wrong shape", infer_url, _json_request((24, 24), [0.1] * 576), {}, 400, "B x C x H x W"),
        ("data/shape mismatch", infer_url, _json_request((1, 1, 4, 4), [0.1] * 3), {}, 400, "16 values"),
        ("oversize", infer_url, *_binary_request(np.zeros((1, 1, 600, 600), np.float32)), 413, "max-pixels"),
        ("unknown model", f"{server.url}/v2/models/nope/infer", _json_request((1, 1, 2, 2), [0.1] * 4), {}, 404, "unknown model"),
        ("undecodable image", f"{server.url}/v1/denoise", b"\x89PNG\r\n\x1a\nbroken", {}, 400, "decode"),
        ("empty image body", f"{server.url}/v1/denoise", b"", {}, 400, "empty"),
    ]
    body, headers = _binary_request(good)
    for what, url, payload, hdrs, status, words in cases:
        code, content, _ = _post(url, payload, hdrs)
        assert code == status, (what, code, content[:300])
        message = json.loads(content)["error"]
        assert words.lower() in message.lower(), (what, message)
        assert "Traceback" not in message
        code, content, resp_headers = _post(infer_url, body, headers)  # a good request right after
        assert code == 200, (what, content[:300])
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert np.abs(np.clip(_infer(client, good[0, 0]), 0, 1) - local.denoise(good[0, 0])).max() <= TOL


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_v1_denoise_round_trips_a_png(server, local, dtype):
    from PIL import Image

    image = np.rint(_photos()[2] * np.iinfo(dtype).max).astype(dtype)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    code, content, headers = _post(f"{server.url}/v1/denoise", buf.getvalue(), {"Content-Type": "image/png"})
    assert code == 200, content[:300]
    assert headers.get("content-type", headers.get("Content-Type")) == "image/png"
    with Image.open(io.BytesIO(content)) as im:
        assert im.format == "PNG"
        out = np.asarray(im)
    assert out.dtype == dtype and out.shape == image.shape
    assert np.abs(out.astype(np.int64) - local.denoise(image).astype(np.int64)).max() <= 1


def test_v1_denoise_rgba_png_keeps_channels_and_alpha(server, local):
    from PIL import Image

    grey = np.rint(_photos()[0] * 255).astype(np.uint8)
    rgba = np.stack([grey, grey[::-1], grey[:, ::-1], np.full_like(grey, 200)], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    code, content, _ = _post(f"{server.url}/v1/denoise", buf.getvalue())
    assert code == 200, content[:300]
    out = np.asarray(Image.open(io.BytesIO(content)))
    assert out.shape == rgba.shape and (out[..., 3] == 200).all()
    assert np.abs(out.astype(int) - local.denoise(rgba).astype(int)).max() <= 1


def test_sigint_stops_the_server_within_30_s(server):
    seconds = stop_shared_server()
    assert seconds is not None and seconds <= STOP_TIMEOUT_S, server.log_tail()
    assert server.proc.returncode == 0, server.log_tail()
    assert "stopped" in server.log_tail()


# ---------------------------------------------------------------- protocol and image codec (no server)
def test_responses_parse_with_tritonclients_own_reader():
    from n3deploy.serving.protocol import InferRequest, RequestedOutput, encode_infer_response

    y = np.random.default_rng(1).random((2, 1, 5, 7), dtype=np.float32)
    for binary in (True, False):
        req = InferRequest(id="r1", inputs={}, outputs=[RequestedOutput("denoised", binary)])
        body, headers = encode_infer_response("n3net", "1", req, {"denoised": y})
        length = headers.get("Inference-Header-Content-Length")
        result = httpclient.InferResult.from_response_body(body, header_length=None if length is None else int(length))
        assert np.array_equal(result.as_numpy("denoised"), y)
        assert result.get_response()["id"] == "r1"


def test_request_parsing_rejects_inconsistent_binary_sections():
    from n3deploy.serving.protocol import ProtocolError, parse_infer_request

    x = np.ones((1, 1, 3, 3), np.float32)
    body, headers = _binary_request(x)
    parsed = parse_infer_request(body, headers["Inference-Header-Content-Length"])
    assert np.array_equal(parsed.inputs["noisy"], x)
    with pytest.raises(ProtocolError, match="binary bytes"):
        parse_infer_request(body + b"xx", headers["Inference-Header-Content-Length"])
    with pytest.raises(ProtocolError, match="outside the body"):
        parse_infer_request(body, str(len(body) + 5))
    with pytest.raises(ProtocolError, match="datatype"):
        parse_infer_request(_json_request((1,), [1], "FLOAT"))


def test_image_codec_keeps_format_and_depth_and_checks_size_first():
    import tifffile

    from n3deploy.serving.images import decode_image, encode_image
    from n3deploy.serving.protocol import ProtocolError

    rgb16 = (np.random.default_rng(2).random((12, 10, 3)) * 65535).astype(np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, rgb16)
    decoded = decode_image(buf.getvalue(), max_pixels=1000)
    assert decoded.format == "TIFF" and decoded.pixels.dtype == np.uint16 and np.array_equal(decoded.pixels, rgb16)
    assert np.array_equal(decode_image(encode_image(rgb16, "TIFF"), 1000).pixels, rgb16)
    with pytest.raises(ProtocolError, match="above this server's limit") as err:
        decode_image(buf.getvalue(), max_pixels=100)
    assert err.value.status == 413
    png16 = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00\x00\x00\x04\x00\x00\x00\x04" + bytes([16, 2, 0, 0, 0])
    with pytest.raises(ProtocolError, match="16-bit colour PNG") as err:
        decode_image(png16, max_pixels=1000)
    assert err.value.status == 415
