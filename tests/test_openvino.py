"""The OpenVINO backend: FP32 as ONNX Runtime computes it, BF16 by the precision plan (KNN in FP32)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("openvino")

from n3deploy.backends import load_backend  # noqa: E402
from n3deploy.backends.openvino_backend import cpu_bf16_support, split_islands  # noqa: E402
from n3deploy.errors import ModelFileError  # noqa: E402
from n3deploy.export.fp16 import fp32_node_names  # noqa: E402
from n3deploy.evaluate import add_noise, image_rng, psnr  # noqa: E402

needs_bf16 = pytest.mark.skipif(not cpu_bf16_support()["bf16"], reason="this CPU has no native BF16 (AVX512_BF16 / AMX)")


@pytest.fixture(scope="module")
def noisy(photos) -> np.ndarray:
    return add_noise(photos[0][1], 25.0, image_rng(0, 0))[None]


def _in_knn(original: str) -> bool:
    return any(name.startswith(("nls.0.aggregation/", "nls.1.aggregation/")) for name in original.split(","))


def test_fp32_runs_every_layer_in_fp32_and_matches_onnxruntime(tiny_onnx, noisy):
    ov32 = load_backend(tiny_onnx.path, "openvino", precision="fp32", threads=1)
    ort = load_backend(tiny_onnx.path, "onnxruntime", threads=1)
    assert ov32.precision == "fp32" and "OpenVINO" in ov32.providers[0]
    assert np.abs(ov32.run(noisy) - ort.run(noisy)).max() <= 1e-4
    precisions = Counter(r["precision"] for r in ov32.runtime_precisions())
    assert precisions["f32"] > 0 and precisions["bf16"] == 0  # the hint is explicit, whatever the CPU


def test_the_registry_says_whether_this_cpu_runs_bf16_and_load_backend_refuses_it_where_not(tiny_onnx):
    """Without native BF16 OpenVINO would quietly run FP32: the registry's precision probe says so
    before anything loads, and the contract suite skips those cases with the reason."""
    from n3deploy.backends import get_backend
    from n3deploy.errors import BackendUnavailableError

    spec = get_backend("openvino")
    assert spec.precision_probe("fp32") is None
    if cpu_bf16_support()["bf16"]:
        assert spec.precision_probe("bf16") is None
        assert load_backend(tiny_onnx.path, "openvino", precision="bf16", threads=1).precision == "bf16"
    else:
        assert "AVX512_BF16" in spec.precision_probe("bf16")
        with pytest.raises(BackendUnavailableError, match="cannot run bf16 here.*AVX512_BF16"):
            load_backend(tiny_onnx.path, "openvino", precision="bf16", threads=1)


@needs_bf16
def test_bf16_plan_runs_the_convolutions_in_bf16_and_no_knn_op_in_bf16(tiny_onnx):
    backend = load_backend(tiny_onnx.path, "openvino", precision="bf16", threads=1)
    assert [i.name for i in backend.islands] == ["cnn0", "knn0", "cnn1", "knn1", "cnn2"]
    rows = backend.runtime_precisions()
    knn_rows = [r for r in rows if r["knn"] == "1"]
    assert knn_rows and all(r["precision"] != "bf16" for r in knn_rows)
    # the KNN islands hold exactly the graph's nodes of the plan's FP32 scopes
    scopes = backend.metadata["fp32_scopes"]
    assert scopes == ["nls.0.aggregation", "nls.1.aggregation"]
    knn_nodes = [n.name for i in backend.islands if i.knn for n in i.model.graph.node]
    assert sorted(knn_nodes) == sorted(fp32_node_names(onnx.load(str(tiny_onnx.path)), scopes))
    convs = Counter(r["precision"] for r in rows if r["layer_type"] == "Convolution")
    assert convs["bf16"] > 0 and set(convs) == {"bf16"}


@needs_bf16
def test_openvinos_own_default_would_run_the_knn_in_bf16(tiny_onnx):
    """Why the plan is needed: left to itself the CPU plugin picks BF16 for KNN ops too."""
    import openvino as ov

    core = ov.Core()
    if cpu_bf16_support()["default_precision"] != "bf16":
        pytest.skip("OpenVINO keeps FP32 by default on this CPU")
    compiled = core.compile_model(core.read_model(str(tiny_onnx.path)), "CPU", {"INFERENCE_NUM_THREADS": 1})
    knn_bf16 = [op for op in compiled.get_runtime_model().get_ops()
                if _in_knn(op.get_rt_info()["originalLayersNames"].astype(str))
                and op.get_rt_info()["runtimePrecision"].astype(str) == "bf16"]
    assert knn_bf16


@needs_bf16
def test_bf16_plan_stays_close_to_fp32_on_photos(tiny_onnx, photos):
    bf16 = load_backend(tiny_onnx.path, "openvino", precision="bf16", threads=1)
    fp32 = load_backend(tiny_onnx.path, "onnxruntime", threads=1)
    deltas = []
    for i, (_, clean) in enumerate(photos):
        noisy = add_noise(clean, 25.0, image_rng(0, i))[None]
        a, b = fp32.run(noisy), bf16.run(noisy)
        assert 0 < np.abs(a - b).max() <= 2e-2  # BF16 rounding is visible, and small
        deltas.append(psnr(clean, np.clip(b[0], 0, 1)) - psnr(clean, np.clip(a[0], 0, 1)))
    assert abs(np.mean(deltas)) <= 0.05


def _paper_onnx() -> Path:
    """The shipped paper-preset model's dynamic H x W export (the shared export cache: built once)."""
    from n3deploy.export.cache import cached_export

    return cached_export("paper-sigma25")


@needs_bf16
def test_paper_model_bf16_plan_within_002_db_of_onnxruntime_fp32_on_a_photo():
    """The shipped paper model on a real 321x481 photo at sigma=25: BF16 plan vs ONNX Runtime FP32."""
    from skimage import data

    path = _paper_onnx()
    clean = (data.moon()[:321, :481].astype(np.float32) / 255)[None]
    noisy = add_noise(clean, 25.0, image_rng(0, 0))[None]
    ort = load_backend(path, "onnxruntime", threads=2).run(noisy)
    ov32 = load_backend(path, "openvino", precision="fp32", threads=2).run(noisy)
    bf16 = load_backend(path, "openvino", precision="bf16", threads=2).run(noisy)
    assert np.abs(ov32 - ort).max() <= 1e-4
    delta = psnr(clean, np.clip(bf16[0], 0, 1)) - psnr(clean, np.clip(ort[0], 0, 1))
    assert abs(delta) <= 0.02 and np.abs(bf16 - ort).max() > 0


def test_denoiser_and_parity_run_openvino(tiny_checkpoint, tiny_onnx, photos, photo_dir, capsys):
    from n3deploy import Denoiser
    from n3deploy.cli import main

    clean = photos[0][1][0]
    image = (np.clip(add_noise(clean, 25.0, image_rng(0, 0)), 0, 1) * 255).astype(np.uint8)
    d = Denoiser(tiny_onnx.path, backend="openvino", precision="fp32", threads=1)
    assert d.backend == "openvino" and d.denoise(image).shape == image.shape
    assert Denoiser(tiny_onnx.path)._backend.precision == "fp32"  # auto keeps FP32
    precision = "bf16" if cpu_bf16_support()["bf16"] else "fp32"
    rc = main(["parity", "--checkpoint", str(tiny_checkpoint), "--onnx", str(tiny_onnx.path), "--backend", "openvino",
               "--precision", precision, "--threads", "1", "--images", str(photo_dir), "--limit", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    (row,) = [line for line in out.splitlines() if line.startswith(f"openvino-{precision}")]
    assert row.split()[1] == precision and row.rstrip().endswith("ok")


def test_a_graph_without_knn_scopes_cannot_be_split(tiny_onnx):
    with pytest.raises(ValueError, match="no node of the graph lies in the FP32 scopes"):
        split_islands(onnx.load(str(tiny_onnx.path)), ["nowhere"])
    with pytest.raises(ModelFileError, match="opens .onnx"):
        load_backend(Path(__file__), "openvino")


def test_openvino_backend_runs_without_torch(tiny_onnx):
    code = f"""
import sys
sys.modules["torch"] = None
import numpy as np
from n3deploy.backends import load_backend
b = load_backend({str(tiny_onnx.path)!r}, "openvino", threads=1)
print(b.run(np.zeros((1, 1, 64, 64), np.float32)).shape, b.precision)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(1,", "1,", "64,", "64)", "fp32"]
