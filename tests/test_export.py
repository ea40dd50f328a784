"""ONNX export: self-contained graphs that match PyTorch, carry metadata and pass the TensorRT audit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from n3deploy.cli import main as cli_main
from n3deploy.export.audit import FORBIDDEN_OPS, MAX_ELEMENTS, GraphAuditError, audit_model
from n3deploy.export.metadata import read_metadata
from n3deploy.export.onnx_export import ExportError, export_onnx
from n3deploy.export.shape_eval import static_shapes_at

REPO = Path(__file__).resolve().parent.parent


def ort_run(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def torch_run(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# --------------------------------------------------------------------------- fixed-size export
def test_fixed_export_matches_pytorch_on_a_photo(tiny_model, tiny_onnx, photos):
    x = photos[0][1][None] + np.float32(0.1) * np.random.default_rng(0).standard_normal((1, 1, 64, 64), dtype=np.float32)
    out = ort_run(tiny_onnx.path, x)
    assert out.shape == (1, 1, 64, 64) and out.dtype == np.float32
    assert np.abs(out - torch_run(tiny_model, x)).max() <= 1e-4
    assert tiny_onnx.verification and all(c.ok for c in tiny_onnx.verification)


def test_export_is_one_checked_file_with_metadata(tiny_onnx, tiny_model):
    path = tiny_onnx.path
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no side-car data file
    model = onnx.load(str(path))
    assert all(t.data_location != TensorProto.EXTERNAL for t in model.graph.initializer)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 18
    meta = read_metadata(path)
    assert meta.sigma == 25.0 and meta.precision == "fp32"
    assert meta.config == tiny_model.config.to_dict()
    assert meta.n3deploy_version
    spec = meta.input_spec
    assert (spec.name, spec.batch, spec.max_batch, spec.channels, spec.height, spec.width) == ("noisy", None, 8, 1, 64, 64)
    # Simplified: no BatchNormalization left (folded into the convolutions), no Constant nodes.
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops and "Constant" not in ops


def test_nodes_are_named_after_their_modules(tiny_onnx):
    model = onnx.load(str(tiny_onnx.path))
    scopes = {n.name.split("/", 1)[0] for n in model.graph.node}
    assert {"nls.0.aggregation", "nls.1.aggregation", "blocks.0.conv1"} <= scopes
    knn_ops = {n.op_type for n in model.graph.node if n.name.startswith("nls.0.aggregation/")}
    assert {"MatMul", "LogSoftmax", "Exp"} <= knn_ops and "Conv" not in knn_ops


def test_audit_of_the_export_passes_and_reports(tiny_onnx):
    report = audit_model(tiny_onnx.path)
    assert report.ok, report.problems
    assert report.op_histogram["Conv"] == 27  # 3 DnCNN blocks x 5 + 2 N3 blocks x (3 + 3)
    assert not set(report.op_histogram) & set(FORBIDDEN_OPS)
    assert report.audited_shape == (8, 1, 64, 64)  # the symbolic batch at its declared maximum
    assert 0 < report.max_elements < MAX_ELEMENTS
    parts = {p.part: p.label for p in report.precision}
    assert parts["nls.0.aggregation"] == "fp32" and parts["blocks.0"] == "fp32"
    text = report.format()
    for needle in ("op histogram", "precision by part", "largest tensors", "audit: PASS", "sigma 25.0"):
        assert needle in text


def test_inspect_command_prints_the_audit(tiny_onnx, capsys):
    assert cli_main(["inspect", str(tiny_onnx.path)]) == 0
    out = capsys.readouterr().out
    assert "noisy: float[batchx1x64x64]" in out and "audit: PASS" in out and "LogSoftmax" in out


# --------------------------------------------------------------------------- audit on crafted graphs
def _graph_model(nodes, inputs, outputs, initializers=(), opset=18) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_audit_rejects_ops_tensorrt_cannot_build():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, [2, None])
    model = _graph_model([helper.make_node("NonZero", ["x"], ["idx"], name="nz")], [x], [idx])
    report = audit_model(model, check_sizes=False)
    assert not report.ok and any("NonZero" in p and "data-dependent" in p for p in report.problems)
    with pytest.raises(GraphAuditError, match="NonZero"):
        report.raise_for_problems()


def _expand_model() -> onnx.ModelProto:
    """y = Expand(x, [1, 512, H, W]) with H, W read from x's shape (input-derived, symbolic)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "height", "width"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512, "height", "width"])
    head = helper.make_tensor("head", TensorProto.INT64, [2], [1, 512])
    nodes = [
        helper.make_node("Shape", ["x"], ["hw"], start=2, name="shape"),
        helper.make_node("Concat", ["head", "hw"], ["target"], axis=0, name="concat"),
        helper.make_node("Expand", ["x", "target"], ["y"], name="expand"),
    ]
    return _graph_model(nodes, [x], [y], [head])


def test_audit_bounds_input_derived_shapes_at_the_maximum_size():
    model = _expand_model()
    small = audit_model(model, max_height=64, max_width=64)
    assert small.ok and small.max_elements == 512 * 64 * 64
    big = audit_model(model, max_height=2160, max_width=3840)  # 512 * 2160 * 3840 > 2^31
    assert not big.ok and any("2^31" in p and "expand" in p for p in big.problems)


def test_audit_rejects_shapes_computed_from_pixel_values():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64, name="to_int"),
        helper.make_node("Reshape", ["x", "xi"], ["y"], name="reshape"),
    ]
    report = audit_model(_graph_model(nodes, [x], [y]), check_sizes=False, full_check=False)
    assert any("data-dependent shape" in p and "reshape" in p for p in report.problems)


def test_audit_refuses_a_symbolic_graph_without_a_declared_maximum():
    report = audit_model(_expand_model())
    assert any("no declared maximum" in p for p in report.problems)


# --------------------------------------------------------------------------- argument checks, CLI
def test_export_rejects_inconsistent_arguments(tiny_model, tmp_path):
    with pytest.raises(ExportError, match="both"):
        export_onnx(tiny_model, tmp_path / "a.onnx", height=64)
    with pytest.raises(ExportError, match="minimum"):
        export_onnx(tiny_model, tmp_path / "b.onnx", height=14, width=64)
    with pytest.raises(ExportError, match="opset"):
        export_onnx(tiny_model, tmp_path / "c.onnx", height=64, width=64, opset=17)
    assert not list(tmp_path.iterdir())


def test_export_script_and_command_share_their_options():
    script = subprocess.run([sys.executable, str(REPO / "export" / "to_onnx.py"), "--help"], capture_output=True, text=True)
    assert script.returncode == 0
    for option in ("--checkpoint", "--height", "--width", "--batch", "--opset", "--fp16", "--max-height"):
        assert option in script.stdout


def test_export_command_writes_a_batch_2_graph(tiny_checkpoint, tiny_model, tmp_path, capsys):
    out = tmp_path / "b2.onnx"
    rc = cli_main(["export", "--checkpoint", str(tiny_checkpoint), "-o", str(out), "--height", "40", "--width", "48",
                   "--batch", "2", "--quiet"])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    x = np.random.default_rng(3).random((2, 1, 40, 48), dtype=np.float32)
    assert np.abs(ort_run(out, x) - torch_run(tiny_model, x)).max() <= 1e-4
    meta = read_metadata(out)
    assert meta.input_spec.batch == 2 and meta.source["checkpoint"] == "tiny.safetensors"


def test_export_command_writes_a_dynamic_batch_graph(tiny_checkpoint, tiny_model, tmp_path, capsys):
    """--batch dynamic: a symbolic batch axis, audited at --max-batch, right at batch 1 and 3."""
    out = tmp_path / "bd.onnx"
    rc = cli_main(["export", "--checkpoint", str(tiny_checkpoint), "-o", str(out), "--height", "40", "--width", "48",
                   "--batch", "dynamic", "--max-batch", "4", "--quiet"])
    assert rc == 0
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, 40, 48]
    for b in (1, 3):
        x = np.random.default_rng(b).random((b, 1, 40, 48), dtype=np.float32)
        assert np.abs(ort_run(out, x) - torch_run(tiny_model, x)).max() <= 1e-4
    spec = read_metadata(out).input_spec
    assert spec.batch is None and spec.max_batch == 4 and spec.max_shape() == (4, 1, 40, 48)


def test_default_batch_of_a_fixed_size_graph_is_symbolic(tiny_onnx, tiny_model):
    """(A dynamic-size graph keeps a batch of 1 by default: the paper-preset tests check its dims.)"""
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(tiny_onnx.path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, 64, 64]
    x = np.random.default_rng(5).random((3, 1, 64, 64), dtype=np.float32)
    assert np.abs(ort_run(tiny_onnx.path, x) - torch_run(tiny_model, x)).max() <= 1e-4


def test_fixed_size_default_caps_max_batch_below_2_31_elements(tiny_model, tmp_path):
    """At 1536x2048 eight samples would exceed TensorRT's 2^31 elements in the KNN's largest tensor:
    the default symbolic batch is declared (and audited) for the largest batch that fits."""
    from n3deploy.export.audit import MAX_ELEMENTS, audit_model
    from n3deploy.export.onnx_export import export_onnx

    result = export_onnx(tiny_model, tmp_path / "big.onnx", height=1536, width=2048, verify=False, progress=False)
    spec = read_metadata(result.path).input_spec
    assert spec.batch is None and 1 <= spec.max_batch < 8
    report = audit_model(result.path)
    assert report.audited_shape == (spec.max_batch, 1, 1536, 2048) and not report.problems
    assert report.largest[0].numel < MAX_ELEMENTS
    assert report.largest[0].numel * (spec.max_batch + 1) // spec.max_batch >= MAX_ELEMENTS  # one more would not fit


def test_bad_batch_arguments_are_refused(tiny_checkpoint, tmp_path):
    with pytest.raises(SystemExit):
        cli_main(["export", "--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path / "x.onnx"), "--batch", "many"])
    assert not list(tmp_path.iterdir())


def test_later_n3_blocks_get_their_own_symbolic_dims():
    """The lean-graph pass renames dims of tensors made in nls.1 (not nls.0, not graph outputs)."""
    from n3deploy.export.lean import separate_block_shapes

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["height", "width"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["height", "width"])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="nls.0.aggregation/relu"),
        helper.make_node("Relu", ["a"], ["b"], name="nls.1.aggregation/relu"),
        helper.make_node("Relu", ["b"], ["y"], name="nls.1/relu"),
    ]
    vis = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["height", "width"]) for n in ("a", "b")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], value_info=vis))
    assert separate_block_shapes(model) == 2
    assert separate_block_shapes(model) == 0  # idempotent
    dims = {vi.name: [d.dim_param for d in vi.type.tensor_type.shape.dim] for vi in model.graph.value_info}
    assert dims == {"a": ["height", "width"], "b": ["height@nls.1", "width@nls.1"]}
    assert [d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim] == ["height", "width"]


# --------------------------------------------------------------------------- the paper preset, dynamic
@pytest.fixture(scope="module")
def paper_dynamic():
    """The shipped paper model and its dynamic export (the shared export cache, so the OpenVINO and
    graph-memory tests reuse the same file: the paper preset's symbolic-shape export is slow)."""
    from n3deploy.checkpoint import load_checkpoint
    from n3deploy.export.cache import cached_export
    from n3deploy.models import resolve_model

    return load_checkpoint(resolve_model("paper-sigma25")).eval(), cached_export("paper-sigma25")


@pytest.mark.slow
def test_paper_preset_dynamic_graph_runs_unchanged_at_two_sizes(paper_dynamic):
    model, path = paper_dynamic
    graph = onnx.load(str(path))
    dims = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, "height", "width"]
    rng = np.random.default_rng(0)
    for h, w in [(64, 64), (97, 181)]:
        x = rng.random((1, 1, h, w), dtype=np.float32)
        assert np.abs(ort_run(path, x) - torch_run(model, x)).max() <= 1e-4, (h, w)
    # Audited at the 4K default maximum: every tensor below TensorRT's 2^31 elements.
    report = audit_model(graph, max_height=2160, max_width=3840)
    assert report.ok and report.audited_shape == (1, 1, 2160, 3840)
    assert 1e8 < report.max_elements < MAX_ELEMENTS


@pytest.mark.slow
def test_static_shape_evaluation_equals_onnxruntime(paper_dynamic):
    """The 2^31 audit's shapes are exact: compare with every intermediate ONNX Runtime computes."""
    import onnxruntime as ort

    _, path = paper_dynamic
    model = onnx.load(str(path))
    shape = (1, 1, 37, 83)
    predicted = static_shapes_at(model, shape)
    names = [o for n in model.graph.node for o in n.output if o and o != "denoised"]
    for name in names:
        model.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(names, {"noisy": np.zeros(shape, np.float32)})
    mismatches = [(n, v.shape, predicted[n].shape) for n, v in zip(names, values) if tuple(v.shape) != predicted[n].shape]
    assert not mismatches and len(names) > 500


def test_cached_export_exports_once_per_checkpoint_and_options(tmp_path, monkeypatch):
    """The key: the checkpoint, the options that change the file (not their defaults, not verify)."""
    from n3deploy.export import cache, onnx_export

    import functools

    calls: list[dict] = []

    @functools.wraps(onnx_export.export_onnx)  # same signature (its defaults decide the key)
    def fake_export(model, path, **options):
        calls.append(options)
        Path(path).write_bytes(b"graph")

    monkeypatch.setattr(onnx_export, "export_onnx", fake_export)
    first = cache.cached_export("tiny-sigma25", cache_dir=tmp_path)
    assert cache.cached_export("tiny-sigma25", cache_dir=tmp_path, fp16=False, opset=18) == first
    assert len(calls) == 1 and calls[0]["verify"] is False and calls[0]["progress"] is False
    fixed = cache.cached_export("tiny-sigma25", cache_dir=tmp_path, height=64, width=64, verify=True)
    assert fixed != first and calls[-1]["verify"] is True and calls[-1]["height"] == 64
    blind = cache.cached_export("tiny-blind", cache_dir=tmp_path)
    assert blind not in (first, fixed) and len(calls) == 3
    assert sorted(tmp_path.iterdir()) == sorted([first, fixed, blind])
