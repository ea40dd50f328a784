"""The FP16 precision plan: PyTorch FP16 runs the FP16 ONNX graph's partition (FP16 CNNs, FP32 KNN)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from n3deploy.backends import load_backend
from n3deploy.backends.torch_backend import TorchBackend
from n3deploy.errors import BackendUnavailableError
from n3deploy.evaluate import add_noise, image_rng, psnr
from n3deploy.export.metadata import read_metadata
from n3deploy.precision import fp32_scopes, mixed_fp16


def parameter_dtypes(model: torch.nn.Module) -> dict[str, torch.dtype]:
    """``{name: dtype}`` of the floating-point parameters and buffers of ``model``."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return {name: t.dtype for name, t in tensors if t.is_floating_point()}


def _fp32_modules(model: torch.nn.Module) -> set[str]:
    """Module paths whose floating-point parameters/buffers are FP32 (the rest must be FP16)."""
    return {name.rsplit(".", 1)[0] for name, dtype in parameter_dtypes(model).items() if dtype == torch.float32}


def test_torch_fp16_keeps_exactly_the_scopes_the_fp16_graph_keeps(tiny_model, tiny_onnx_fp16):
    mixed = mixed_fp16(tiny_model)
    graph_scopes = read_metadata(tiny_onnx_fp16.path).fp32_scopes
    assert fp32_scopes(mixed) == graph_scopes == ("nls.0.aggregation", "nls.1.aggregation")
    assert _fp32_modules(mixed) == {f"{s}.distance_bn" for s in graph_scopes}
    dtypes = parameter_dtypes(mixed)
    assert dtypes["blocks.0.conv1.weight"] == dtypes["nls.1.embedcnn.0.weight"] == torch.float16
    assert parameter_dtypes(tiny_model)["blocks.0.conv1.weight"] == torch.float32  # the original is untouched


def test_fp32_islands_keep_their_parameters_bit_for_bit(tiny_model):
    """``half()`` works in place: an island must not round-trip through FP16 (80,000 -> inf)."""
    import copy

    model = copy.deepcopy(tiny_model)
    bn = model.nls[0].aggregation.distance_bn
    bn.running_var.fill_(79874.61)  # above FP16's largest value, like the shipped model's
    bn.running_mean.fill_(-341.3003)  # not representable in FP16
    mixed = mixed_fp16(model)
    for name, value in model.nls[0].aggregation.state_dict().items():
        assert torch.equal(mixed.nls[0].aggregation.state_dict()[name], value), name


def test_batchnorms_are_folded_into_the_convolutions_first(tiny_model):
    import copy

    from n3deploy.precision import fold_batchnorms

    folded = copy.deepcopy(tiny_model)
    assert fold_batchnorms(folded) == 17  # every conv-BN pair of the tiny preset
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in mixed_fp16(tiny_model).modules())
    x = torch.rand(1, 1, 40, 45)
    with torch.inference_mode():
        assert torch.allclose(folded(x), tiny_model(x), atol=1e-5)


def test_knn_islands_compute_in_fp32_and_hand_fp16_back(tiny_model):
    mixed = mixed_fp16(tiny_model)
    seen: dict[str, torch.dtype] = {}
    for name in fp32_scopes(mixed):
        island = mixed.get_submodule(name)
        island.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(f"{name} in", args[1].dtype))
    block = mixed.get_submodule("nls.0")
    block.register_forward_hook(lambda m, args, out: seen.__setitem__("nls.0 out", out.dtype))
    x = torch.rand(1, 1, 40, 45)
    with torch.inference_mode():
        y = mixed(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    # our pre-hook runs after the plan's (registration order): the KNN receives FP32 embeddings
    assert seen == {"nls.0.aggregation in": torch.float32, "nls.1.aggregation in": torch.float32, "nls.0 out": torch.float16}


def test_torch_fp16_agrees_with_the_fp16_graph_and_fp32_on_photos(tiny_checkpoint, tiny_onnx_fp16, photos):
    fp32 = load_backend(tiny_checkpoint, "torch")
    fp16 = load_backend(tiny_checkpoint, "torch", precision="fp16")
    graph = load_backend(tiny_onnx_fp16.path)
    assert fp16.precision == "fp16" and "FP16 plan" in fp16.providers[0]
    deltas = []
    for i, (_, clean) in enumerate(photos):
        noisy = add_noise(clean, 25.0, image_rng(0, i))[None]
        a, b, g = fp32.run(noisy), fp16.run(noisy), graph.run(noisy)
        assert b.dtype == np.float32 and np.isfinite(b).all()
        assert 0 < np.abs(a - b).max() <= 5e-3  # FP16 rounding is visible, and small
        assert np.abs(b - g).max() <= 5e-3
        deltas.append(psnr(clean, b[0]) - psnr(clean, a[0]))
    assert abs(np.mean(deltas)) <= 0.02


def test_unknown_precision_is_refused(tiny_checkpoint):
    with pytest.raises(BackendUnavailableError, match="precision 'int8'"):
        load_backend(tiny_checkpoint, "torch", precision="int8")


def test_a_model_without_knn_has_no_fp16_plan():
    with pytest.raises(ValueError, match="no KNN aggregation"):
        mixed_fp16(torch.nn.Conv2d(1, 1, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: PyTorch sees none on this machine")
def test_fp16_plan_on_cuda_matches_fp32_within_the_fp16_tolerance(tiny_model, photos):
    fp32 = TorchBackend.from_model(tiny_model, device="cuda")
    fp16 = TorchBackend.from_model(tiny_model, device="cuda", precision="fp16")
    deltas = []
    for i, (_, clean) in enumerate(photos):
        noisy = add_noise(clean, 25.0, image_rng(0, i))[None]
        a, b = fp32.run(noisy), fp16.run(noisy)
        assert np.isfinite(b).all() and 0 < np.abs(a - b).max() <= 5e-3
        deltas.append(psnr(clean, b[0]) - psnr(clean, a[0]))
    assert abs(np.mean(deltas)) <= 0.02


def test_torch_bf16_plan_runs_on_cpu_close_to_fp32_with_fp32_knn(tiny_checkpoint, tiny_model, photos):
    from n3deploy.precision import mixed_bf16

    plan = mixed_bf16(tiny_model)
    dtypes = parameter_dtypes(plan)
    assert dtypes["blocks.0.conv1.weight"] == dtypes["nls.1.embedcnn.0.weight"] == torch.bfloat16
    assert _fp32_modules(plan) == {f"{s}.distance_bn" for s in fp32_scopes(plan)}  # the KNN keeps FP32
    fp32 = load_backend(tiny_checkpoint, "torch")
    bf16 = load_backend(tiny_checkpoint, "torch", precision="bf16", device="cpu")
    assert bf16.precision == "bf16" and "BF16 plan" in bf16.providers[0]
    deltas = []
    for i, (_, clean) in enumerate(photos):
        noisy = add_noise(clean, 25.0, image_rng(0, i))[None]
        a, b = fp32.run(noisy), bf16.run(noisy)
        assert b.dtype == np.float32 and np.isfinite(b).all()
        assert 0 < np.abs(a - b).max() <= 2e-2  # BF16 keeps 8 mantissa bits: visible, and small
        deltas.append(psnr(clean, b[0]) - psnr(clean, a[0]))
    assert abs(np.mean(deltas)) <= 0.05


def test_precision_vocabulary_is_one_list():
    from n3deploy.backends import BACKENDS
    from n3deploy.precision import PRECISIONS, normalize_precision

    assert PRECISIONS == ("fp32", "fp16", "bf16", "fp64")
    assert normalize_precision("mixed-fp16") == "fp16"  # graphs of earlier versions
    assert all(set(spec.precisions) <= set(PRECISIONS) for spec in BACKENDS.values())
