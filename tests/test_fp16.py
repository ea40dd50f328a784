"""The mixed-precision FP16 graph: FP16 convolutions, FP32 KNN chain, FP32 I/O, no overflow."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from n3deploy.backends import load_backend
from n3deploy.evaluate import add_noise, image_rng, psnr
from n3deploy.export.audit import audit_model
from n3deploy.export.fp16 import FP16_MAX, convert_to_mixed_fp16, fp16_tensor_ranges
from n3deploy.export.metadata import read_metadata

FRAGILE_OPS = {"LogSoftmax", "Exp", "Log", "Tanh", "Div", "MatMul", "ReduceMax", "Where"}


def _types(model: onnx.ModelProto) -> dict[str, int]:
    typed = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(typed.graph.value_info) + list(typed.graph.output)}
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in typed.graph.input})
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def test_fp16_graph_is_strongly_typed_with_an_fp32_knn_chain(tiny_onnx_fp16):
    model = onnx.load(str(tiny_onnx_fp16.path))
    onnx.checker.check_model(model, full_check=True)
    types = _types(model)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 27
    for conv in convs:  # every convolution reads FP16 activations and FP16 weights
        assert types[conv.input[0]] == types[conv.input[1]] == types[conv.output[0]] == TensorProto.FLOAT16, conv.name
    knn = [n for n in model.graph.node if "aggregation/" in n.name and n.op_type != "Cast"]
    assert {n.op_type for n in knn} >= FRAGILE_OPS
    for node in knn:  # nothing inside the KNN chain computes or stores FP16
        for name in list(node.input) + list(node.output):
            assert types.get(name) != TensorProto.FLOAT16, (node.name, name)
    # The only casts are the boundaries: input, output, and into/out of each N3 block's KNN.
    assert sum(n.op_type == "Cast" for n in model.graph.node) <= 12
    meta = read_metadata(tiny_onnx_fp16.path)
    assert meta.precision == "fp16" and meta.fp32_scopes == ("nls.0.aggregation", "nls.1.aggregation")


def test_fp16_graph_passes_the_audit_and_reports_precision_by_part(tiny_onnx_fp16):
    report = audit_model(tiny_onnx_fp16.path)
    assert report.ok, report.problems
    labels = {p.part: p.label for p in report.precision}
    assert labels["nls.0.aggregation"] == labels["nls.1.aggregation"] == "fp32"
    assert labels["blocks.0"] == labels["blocks.2"] == labels["nls.0.embedcnn"] == labels["nls.1.tempcnn"] == "fp16"


def test_fp16_matches_fp32_on_real_photos_at_sigma_25(tiny_onnx, tiny_onnx_fp16, photos):
    fp32, fp16 = load_backend(tiny_onnx.path), load_backend(tiny_onnx_fp16.path)
    assert fp16.precision == "fp16"
    deltas = []
    for i, (_, clean) in enumerate(photos):
        noisy = add_noise(clean, 25.0, image_rng(0, i))[None]
        a, b = fp32.run(noisy), fp16.run(noisy)
        assert np.isfinite(b).all()
        assert np.abs(a - b).max() <= 5e-3 * max(1.0, np.abs(a).max())
        deltas.append(psnr(clean, b[0]) - psnr(clean, a[0]))
    assert abs(np.mean(deltas)) <= 0.02


def test_fp16_ranges_cover_every_fp16_tensor_with_headroom(tiny_onnx_fp16, photos):
    model = onnx.load(str(tiny_onnx_fp16.path))
    types = _types(model)
    fp16_outputs = {o for n in model.graph.node for o in n.output if types.get(o) == TensorProto.FLOAT16}
    inputs = [add_noise(clean, 25.0, image_rng(0, i))[None] for i, (_, clean) in enumerate(photos)]
    report = fp16_tensor_ranges(model, inputs, chunk=16)
    assert report.images == 3 and {t.name for t in report.tensors} == fp16_outputs
    assert not report.overflowed and all(t.nonfinite == 0 for t in report.tensors)
    worst = report.worst
    assert 0.1 < worst.max_abs < FP16_MAX and worst.headroom == pytest.approx(FP16_MAX / worst.max_abs)
    assert "headroom" in report.format()


def _scaled_graph(scale: float) -> onnx.ModelProto:
    """fp32 x -> Cast fp16 -> Mul(scale, fp16) -> Cast fp32: overflows when |x * scale| > 65504."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])
    s = numpy_helper.from_array(np.array(scale, dtype=np.float16), "s")
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16, name="in"),
        helper.make_node("Mul", ["x16", "s"], ["y16"], name="scale"),
        helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT, name="out"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[s])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_fp16_ranges_detect_overflow():
    x = np.full((1, 1, 2, 2), 10.0, np.float32)
    safe = fp16_tensor_ranges(_scaled_graph(100.0), [x])
    assert not safe.overflowed and safe.worst.max_abs == pytest.approx(1000.0)
    over = fp16_tensor_ranges(_scaled_graph(30000.0), [x])  # 3e5 > 65504 -> inf
    assert [t.name for t in over.overflowed] == ["y16"] and over.worst.headroom == 0.0


def test_converter_keeps_blocked_scopes_fp32_and_splits_shared_constants():
    """Unit check of the block list: a constant read by both an FP32 and an FP16 node is split."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    c = numpy_helper.from_array(np.array([0.5, 1.5, 2.5, 3.5], np.float32), "c")
    nodes = [
        helper.make_node("Mul", ["x", "c"], ["a"], name="convs/mul"),
        helper.make_node("Exp", ["a"], ["b"], name="knn/exp"),
        helper.make_node("Add", ["b", "c"], ["d"], name="knn/add"),
        helper.make_node("Add", ["d", "c"], ["y"], name="convs/add"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=[c]),
                              opset_imports=[helper.make_opsetid("", 18)])
    mixed = convert_to_mixed_fp16(model, ["knn"])
    onnx.checker.check_model(mixed, full_check=True)
    types = _types(mixed)
    by_name = {n.name: n for n in mixed.graph.node}
    assert types[by_name["knn/exp"].output[0]] == types[by_name["knn/add"].output[0]] == TensorProto.FLOAT
    assert types[by_name["convs/mul"].output[0]] == TensorProto.FLOAT16
    with pytest.raises(ValueError, match="FP32 scopes"):
        convert_to_mixed_fp16(model, ["nowhere"])


def test_inspect_reports_fp16_headroom_on_a_folder_of_photos(tiny_onnx_fp16, photo_dir, capsys):
    from n3deploy.cli import main as cli_main

    assert cli_main(["inspect", str(tiny_onnx_fp16.path), "--images", str(photo_dir), "--sigma", "25"]) == 0
    out = capsys.readouterr().out
    assert "FP16 headroom on 3 images" in out and "to 65504" in out and "nonfinite=0" in out
