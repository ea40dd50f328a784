"""``n3deploy triton-repo``: configs parse into Triton's ModelConfig and match the graph and the plan.

Triton itself cannot run here (its onnxruntime/tensorrt backends are not on PyPI): every
config.pbtxt is parsed back with ``google.protobuf.text_format`` into
``tritonclient.grpc.model_config_pb2.ModelConfig`` and compared with the ONNX graph's own I/O.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc")
onnx = pytest.importorskip("onnx")

from n3deploy.cli import main  # noqa: E402
from n3deploy.errors import StaticGraphMemoryWarning  # noqa: E402
from n3deploy.serving.triton_repo import (  # noqa: E402
    RepoOptions, TritonRepoError, onnx_io, read_config, validate_triton_repo, write_triton_repo,
)


def _graph_dims(path: Path, which: str) -> dict[str, list[int]]:
    model = onnx.load(str(path), load_external_data=False)
    values = model.graph.input if which == "input" else model.graph.output
    inits = {t.name for t in model.graph.initializer}
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
        for v in values if v.name not in inits
    }


@pytest.fixture(scope="module")
def dynamic_batch_onnx(tiny_onnx) -> Path:
    """The shared tiny graph: fixed 64x64 with the default symbolic batch axis."""
    dims = _graph_dims(tiny_onnx.path, "input")["noisy"]
    assert dims == [-1, 1, 64, 64]
    return Path(tiny_onnx.path)


@pytest.fixture(scope="module")
def fixed_batch_onnx(tiny_onnx, tmp_path_factory) -> Path:
    """The shared tiny graph with every axis fixed (what `export --batch 1 --height 64 --width 64` writes)."""
    model = onnx.load(str(tiny_onnx.path))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    path = tmp_path_factory.mktemp("fixedb") / "tiny_b1.onnx"
    onnx.save(model, str(path))
    return path


def test_fixed_batch_graph_gives_full_dims_and_no_batching(fixed_batch_onnx, tmp_path):
    with pytest.warns(StaticGraphMemoryWarning, match="no symbolic axis"):  # every axis of the graph is fixed
        rc = main(["triton-repo", "--onnx", str(fixed_batch_onnx), "-o", str(tmp_path / "repo"), "--instances", "2"])
    assert rc == 0
    config = read_config(tmp_path / "repo" / "n3net" / "config.pbtxt")
    from tritonclient.grpc import model_config_pb2 as pb

    assert isinstance(config, pb.ModelConfig)
    assert config.name == "n3net" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    graph_in, graph_out = _graph_dims(fixed_batch_onnx, "input"), _graph_dims(fixed_batch_onnx, "output")
    assert {t.name: list(t.dims) for t in config.input} == graph_in == {"noisy": [1, 1, 64, 64]}
    assert {t.name: list(t.dims) for t in config.output} == graph_out
    assert all(pb.DataType.Name(t.data_type) == "TYPE_FP32" for t in list(config.input) + list(config.output))
    assert config.instance_group[0].count == 2 and pb.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_CPU"
    assert config.parameters["enable_mem_pattern"].string_value == "0"
    assert config.parameters["enable_mem_arena"].string_value == "1"
    assert int(config.parameters["intra_op_thread_count"].string_value) >= 1
    assert list(config.model_warmup[0].inputs["noisy"].dims) == [1, 1, 64, 64]
    assert '"stride": 5' in config.parameters["n3deploy_config"].string_value
    copied = tmp_path / "repo" / "n3net" / "1" / "model.onnx"
    assert copied.read_bytes() == fixed_batch_onnx.read_bytes()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # the temp folder was renamed, nothing left


def test_dynamic_batch_graph_batches_and_drops_the_batch_axis(dynamic_batch_onnx, tmp_path):
    paths = write_triton_repo(dynamic_batch_onnx, tmp_path / "repo", options=RepoOptions(max_batch=16, gpu=True))
    config = read_config(paths[0])
    from tritonclient.grpc import model_config_pb2 as pb

    assert config.max_batch_size == 16 and config.HasField("dynamic_batching")
    assert [list(t.dims) for t in config.input] == [[1, 64, 64]]  # the graph's dims without the batch axis
    assert pb.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
    (trt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    assert trt.parameters["trt_engine_cache_enable"] == "1"
    assert list(config.model_warmup[0].inputs["noisy"].dims) == [1, 64, 64]


def test_plan_entry_uses_the_plan_profile(dynamic_batch_onnx, tmp_path):
    from n3deploy.fileio import sha256_file
    from n3deploy.tensorrt.metadata import EngineMetadata, write_metadata
    from n3deploy.tensorrt.shapes import ProfileShapes

    plan = tmp_path / "m.plan"
    plan.write_bytes(b"serialized engine bytes (not parsed by triton-repo)")
    profile = ProfileShapes((1, 1, 32, 32), (4, 1, 256, 256), (8, 1, 1080, 1920))
    write_metadata(EngineMetadata(
        tensorrt_version="10.13.0", gpu_name="NVIDIA L4", compute_capability="8.9", precision="fp16",
        input_name="noisy", output_names=("denoised",), profile=profile, static_input_shape=None,
        onnx_file=str(dynamic_batch_onnx), onnx_sha256=sha256_file(dynamic_batch_onnx), build={},
    ), plan)
    paths = write_triton_repo(dynamic_batch_onnx, tmp_path / "repo", plan, RepoOptions(max_batch=8))
    assert [p.parent.name for p in paths] == ["n3net", "n3net_trt"]
    config = read_config(paths[1])
    assert config.platform == "tensorrt_plan" and config.name == "n3net_trt"
    assert config.max_batch_size == 8 and [list(t.dims) for t in config.input] == [[1, -1, -1]]
    assert [t.name for t in config.output] == ["denoised"]
    assert list(config.model_warmup[0].inputs["noisy"].dims) == [1, 256, 256]  # the profile's opt shape
    assert (tmp_path / "repo" / "n3net_trt" / "1" / "model.plan").read_bytes() == plan.read_bytes()


def test_validation_catches_a_config_that_does_not_match_the_graph(fixed_batch_onnx, tmp_path):
    with pytest.warns(StaticGraphMemoryWarning):
        write_triton_repo(fixed_batch_onnx, tmp_path / "repo")
    cfg = tmp_path / "repo" / "n3net" / "config.pbtxt"
    text = cfg.read_text()
    cfg.write_text(text.replace('name: "noisy"', 'name: "input"', 1))
    with pytest.raises(TritonRepoError, match="inputs"):
        validate_triton_repo(tmp_path / "repo", fixed_batch_onnx)
    cfg.write_text(text.replace("dims: 64", "dims: 32", 1))
    with pytest.raises(TritonRepoError, match="dims"):
        validate_triton_repo(tmp_path / "repo", fixed_batch_onnx)
    cfg.write_text(text.replace("max_batch_size: 0", "") + "\nmax_batch_size: 4\n")
    with pytest.raises(TritonRepoError, match="batch axis is fixed"):
        validate_triton_repo(tmp_path / "repo", fixed_batch_onnx)
    cfg.write_text(text + "\nno_such_field: 1\n")
    with pytest.raises(TritonRepoError, match="not a valid Triton ModelConfig"):
        validate_triton_repo(tmp_path / "repo", fixed_batch_onnx)


def test_existing_repo_needs_force_and_is_replaced_whole(tiny_onnx, tmp_path):
    out = tmp_path / "repo"
    write_triton_repo(tiny_onnx.path, out)
    (out / "stale").mkdir()
    with pytest.raises(TritonRepoError, match="--force"):
        write_triton_repo(tiny_onnx.path, out)
    write_triton_repo(tiny_onnx.path, out, options=RepoOptions(name="other"), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["other"]
    assert onnx_io(out / "other" / "1" / "model.onnx").inputs[0].name == "noisy"


def test_a_graph_with_a_symbolic_axis_gives_no_memory_warning(dynamic_batch_onnx, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", StaticGraphMemoryWarning)
        write_triton_repo(dynamic_batch_onnx, tmp_path / "repo")
