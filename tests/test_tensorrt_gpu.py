"""TensorRT on a real GPU: build, metadata, run, cache, polygraphy, trtexec, parity with ONNX Runtime FP32.

These tests need the ``tensorrt`` package (>= 10) and a CUDA GPU with PyTorch-CUDA or cuda-python
buffers. Everywhere else the whole module is SKIPPED with the reason; nothing here is faked.
Parity on a real exported N3Net: set N3DEPLOY_TEST_ONNX_FP32=model.onnx and
N3DEPLOY_TEST_ONNX_FP16=model_fp16.onnx (optionally N3DEPLOY_TEST_FP16_ATOL, default 2e-2).
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

trt = pytest.importorskip(
    "tensorrt",
    reason="TensorRT is not installed (it needs NVIDIA's package index and a CUDA GPU; see docs/tensorrt.md)",
)

from n3deploy.errors import EngineMismatchError  # noqa: E402
from n3deploy.tensorrt.env import find_trtexec, gpu_info, tensorrt_available  # noqa: E402

_ok, _reason = tensorrt_available()
if not _ok:
    pytest.skip(_reason, allow_module_level=True)
_gpu, _gpu_reason = gpu_info(0)
if _gpu is None:
    pytest.skip(f"TensorRT {trt.__version__} is installed but {_gpu_reason}", allow_module_level=True)
try:
    import torch

    _buffers = torch.cuda.is_available()
except ImportError:
    _buffers = False
if not _buffers:
    try:
        from n3deploy.tensorrt.env import _cudart

        _cudart()
        _buffers = True
    except ImportError:
        pytest.skip("neither PyTorch with CUDA nor cuda-python is available for device buffers", allow_module_level=True)

import onnxruntime as ort  # noqa: E402

from n3deploy.backends.tensorrt_backend import TensorRTBackend  # noqa: E402
from n3deploy.tensorrt.builder import build_engine, record_trtexec_plan  # noqa: E402
from n3deploy.tensorrt.cache import EngineCache  # noqa: E402
from n3deploy.tensorrt.metadata import metadata_path, read_metadata  # noqa: E402
from n3deploy.tensorrt.runner import polygraphy_trt_runner  # noqa: E402
from n3deploy.tensorrt.sample_graphs import make_residual_conv_onnx  # noqa: E402
from n3deploy.tensorrt.spec import resolve_spec  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]
FP16_ATOL = float(os.environ.get("N3DEPLOY_TEST_FP16_ATOL", "2e-2"))


def _ort_fp32(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    d = tmp_path_factory.mktemp("trt")
    return {
        "fp32": make_residual_conv_onnx(d / "model.onnx", (1, 1, "height", "width"), metadata={"sigma": "25"}),
        "fp16": make_residual_conv_onnx(d / "model_fp16.onnx", (1, 1, "height", "width"), fp16=True, metadata={"sigma": "25"}),
        "fixed": make_residual_conv_onnx(d / "fixed.onnx", (1, 1, 96, 128), fp16=True),
        "dir": d,
    }


@pytest.fixture(scope="module")
def fp16_plan(graphs):
    spec = resolve_spec(graphs["fp16"], graphs["dir"] / "model_fp16.plan", min_shape="1x1x32x32",
                        opt_shape="1x1x256x256", max_shape="1x1x512x512", timing_cache=graphs["dir"] / "trt.cache",
                        workspace_gib=1)
    meta = build_engine(spec)
    return spec.output_path, meta


def test_build_writes_plan_metadata_and_timing_cache(fp16_plan, graphs):
    plan, meta = fp16_plan
    assert plan.stat().st_size > 0 and metadata_path(plan).is_file() and (graphs["dir"] / "trt.cache").is_file()
    assert read_metadata(plan) == meta
    assert meta.precision == "fp16" and meta.tensorrt_version == trt.__version__
    assert meta.gpu_name == _gpu.name and meta.compute_capability == _gpu.compute_capability
    assert meta.profile.max == (1, 1, 512, 512) and meta.input_name == "noisy" and meta.output_names == ("denoised",)


def test_fp16_engine_matches_onnxruntime_fp32(fp16_plan, graphs):
    plan, _ = fp16_plan
    backend = TensorRTBackend(plan)
    assert backend.precision == "fp16" and backend.metadata["sigma"] == 25
    limits = backend.input_shape_limits
    assert (limits.max_height, limits.max_width, limits.channels) == (512, 512, 1) and limits.is_dynamic
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 32, 32), (1, 1, 256, 256), (1, 1, 300, 512), (1, 1, 512, 77)]:
        x = rng.random(shape, dtype=np.float32)
        y = backend.run(x)
        ref = _ort_fp32(graphs["fp32"], x)
        assert y.shape == shape and y.dtype == np.float32 and np.isfinite(y).all()
        np.testing.assert_allclose(y, ref, atol=FP16_ATOL, rtol=0)


def test_out_of_profile_input_is_refused_before_tensorrt(fp16_plan):
    backend = TensorRTBackend(fp16_plan[0])
    with pytest.raises(EngineMismatchError, match="--max-shape 1x1x600x600"):
        backend.run(np.zeros((1, 1, 600, 600), np.float32))


def test_engine_from_another_tensorrt_is_refused_with_rebuild_advice(fp16_plan, tmp_path):
    plan, _ = fp16_plan
    copy = tmp_path / "other.plan"
    copy.write_bytes(plan.read_bytes())
    data = json.loads(metadata_path(plan).read_text())
    data["tensorrt_version"] = "9.0.0"
    metadata_path(copy).write_text(json.dumps(data))
    with pytest.raises(EngineMismatchError, match="TensorRT 9.0.0.*n3deploy build-engine"):
        TensorRTBackend(copy)


def test_fixed_shape_graph_builds_without_profile(graphs):
    spec = resolve_spec(graphs["fixed"], graphs["dir"] / "fixed.plan")
    meta = build_engine(spec)
    assert meta.profile is None and meta.static_input_shape == (1, 1, 96, 128)
    x = np.random.default_rng(1).random((1, 1, 96, 128), dtype=np.float32)
    np.testing.assert_allclose(TensorRTBackend(spec.output_path).run(x), _ort_fp32(graphs["fixed"], x), atol=FP16_ATOL)


def test_engine_cache_builds_once(graphs, tmp_path):
    cache = EngineCache(tmp_path / "engines")
    plan = cache.get_or_build(graphs["fp16"], {"max_shape": "1x1x256x256"})
    stamp = plan.stat().st_mtime_ns
    assert cache.get_or_build(graphs["fp16"], {"max_shape": "1x1x256x256"}) == plan and plan.stat().st_mtime_ns == stamp
    backend = TensorRTBackend.from_onnx(graphs["fp16"], cache_dir=tmp_path / "engines", max_shape="1x1x256x256")
    assert backend.model_path == plan


def test_polygraphy_trt_runner_agrees_with_backend(fp16_plan):
    plan, meta = fp16_plan
    runner, runner_meta = polygraphy_trt_runner(plan)
    assert runner_meta == meta
    x = np.random.default_rng(2).random((1, 1, 128, 128), dtype=np.float32)
    with runner:
        out = runner.infer({meta.input_name: x})[meta.output_names[0]]
    np.testing.assert_allclose(np.asarray(out), TensorRTBackend(plan).run(x), atol=1e-3)


@pytest.mark.skipif(find_trtexec() is None, reason="trtexec is not installed (it ships with NVIDIA's TensorRT tarball/container)")
def test_printed_trtexec_command_builds_a_loadable_engine(graphs):
    spec = resolve_spec(graphs["fp16"], graphs["dir"] / "trtexec.plan", max_shape="1x1x256x256")
    subprocess.run(spec.to_trtexec_args(find_trtexec()), check=True, capture_output=True, timeout=600)
    meta = record_trtexec_plan(spec)
    assert meta.built_with == "trtexec" and meta.profile == spec.profile
    x = np.random.default_rng(3).random((1, 1, 200, 136), dtype=np.float32)
    np.testing.assert_allclose(TensorRTBackend(spec.output_path).run(x), _ort_fp32(graphs["fp32"], x), atol=FP16_ATOL)


@pytest.mark.skipif(not (os.environ.get("N3DEPLOY_TEST_ONNX_FP32") and os.environ.get("N3DEPLOY_TEST_ONNX_FP16")),
                    reason="set N3DEPLOY_TEST_ONNX_FP32 and N3DEPLOY_TEST_ONNX_FP16 to exported N3Net graphs to run")
def test_exported_n3net_fp16_engine_parity(tmp_path):
    fp32, fp16 = os.environ["N3DEPLOY_TEST_ONNX_FP32"], os.environ["N3DEPLOY_TEST_ONNX_FP16"]
    spec = resolve_spec(fp16, tmp_path / "n3net_fp16.plan", min_shape=None, max_shape=None)
    build_engine(spec)
    backend = TensorRTBackend(spec.output_path)
    shape = spec.profile.opt if spec.profile else spec.static_input_shape
    x = np.random.default_rng(4).random(shape, dtype=np.float32)
    y, ref = backend.run(x), _ort_fp32(fp32, x)
    assert np.isfinite(y).all(), "FP16 engine produced NaN/Inf (FP16 overflow in the graph?)"
    np.testing.assert_allclose(y, ref, atol=FP16_ATOL, rtol=0)
