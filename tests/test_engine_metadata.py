"""Engine metadata, compatibility/profile checks, cache keys and the engine cache: CPU-only.

RuntimeInfo values here are plain data describing a machine; the cache's build step is a plain
function that writes a plan file, so the cache logic is exercised without pretending to be TensorRT.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest

from n3deploy import __version__
from n3deploy.errors import EngineMismatchError, ModelFileError
from n3deploy.tensorrt.cache import EngineCache, cache_key
from n3deploy.tensorrt.env import RuntimeInfo
from n3deploy.tensorrt.metadata import (
    EngineMetadata,
    check_compatible,
    check_input_shape,
    metadata_path,
    read_metadata,
    same_tensorrt_release,
    write_metadata,
)
from n3deploy.tensorrt.onnx_graph import onnx_fingerprint, read_onnx_graph
from n3deploy.tensorrt.sample_graphs import make_residual_conv_onnx
from n3deploy.tensorrt.spec import EngineBuildSpec, resolve_spec

L4 = RuntimeInfo("10.13.0.35", "NVIDIA L4", "8.9")


@pytest.fixture()
def onnx_fp16(tmp_path) -> Path:
    return make_residual_conv_onnx(tmp_path / "model_fp16.onnx", fp16=True, metadata={"sigma": "25", "config": '{"k": 7}'})


@pytest.fixture()
def spec(onnx_fp16, tmp_path) -> EngineBuildSpec:
    return resolve_spec(onnx_fp16, tmp_path / "model.plan", max_shape="1x1x1080x1920", timing_cache=tmp_path / "t.cache")


def _meta(spec: EngineBuildSpec, runtime: RuntimeInfo = L4) -> EngineMetadata:
    return EngineMetadata.for_build(spec, runtime, onnx_sha256=onnx_fingerprint(spec.onnx_path), output_names=["denoised"],
                                    onnx_metadata=read_onnx_graph(spec.onnx_path).metadata_props)


# -- metadata file -------------------------------------------------------------------------------------
def test_metadata_round_trip_next_to_plan(spec):
    spec.output_path.write_bytes(b"plan bytes")
    meta = _meta(spec)
    path = write_metadata(meta, spec.output_path)
    assert path == metadata_path(spec.output_path) == spec.output_path.with_name("model.plan.json")
    assert [p.name for p in spec.output_path.parent.iterdir() if p.name.endswith(".tmp")] == []
    data = json.loads(path.read_text())
    for key in ("tensorrt_version", "gpu_name", "compute_capability", "precision", "profile", "onnx_sha256", "n3deploy_version"):
        assert key in data
    assert data["n3deploy_version"] == __version__ and data["precision"] == "fp16"
    assert data["profile"] == {"min": [1, 1, 64, 64], "opt": [1, 1, 512, 512], "max": [1, 1, 1080, 1920]}
    again = read_metadata(spec.output_path)
    assert again == meta
    assert again.spec == spec
    assert again.onnx_metadata == {"sigma": "25", "config": '{"k": 7}'}


def test_read_metadata_explains_missing_or_broken_files(spec):
    with pytest.raises(ModelFileError, match="plan not found"):
        read_metadata(spec.output_path)
    spec.output_path.write_bytes(b"plan")
    with pytest.raises(ModelFileError, match="no engine metadata.*--metadata-only"):
        read_metadata(spec.output_path)
    metadata_path(spec.output_path).write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid n3deploy engine metadata"):
        read_metadata(spec.output_path)
    data = _meta(spec).to_dict()
    data["schema"] = 99
    metadata_path(spec.output_path).write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="schema 99"):
        read_metadata(spec.output_path)


# -- compatibility -------------------------------------------------------------------------------------
def test_same_machine_is_compatible_and_build_numbers_do_not_matter(spec):
    meta = _meta(spec)
    check_compatible(meta, L4)
    check_compatible(meta, dataclasses.replace(L4, tensorrt_version="10.13.0.99"))
    assert same_tensorrt_release("10.13.0", "10.13.0.35") and not same_tensorrt_release("10.13.0", "10.13.1")


@pytest.mark.parametrize(
    "runtime,needle",
    [
        (RuntimeInfo("10.12.0.36", "NVIDIA L4", "8.9"), "built with TensorRT 10.13.0.35, this machine has TensorRT 10.12.0.36"),
        (RuntimeInfo("11.0.0", "NVIDIA L4", "8.9"), "TensorRT 11.0.0"),
        (RuntimeInfo("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0"), "compute capability 8.9 (NVIDIA L4)"),
        (RuntimeInfo("10.13.0.35", "NVIDIA GeForce RTX 4090", "8.9"), "built on a NVIDIA L4"),
    ],
)
def test_mismatch_says_what_to_rebuild_and_how(spec, runtime, needle):
    meta = _meta(spec)
    with pytest.raises(EngineMismatchError) as info:
        check_compatible(meta, runtime)
    message = str(info.value)
    assert needle in message
    assert "Rebuild it on this machine with: n3deploy build-engine" in message
    assert str(spec.onnx_path) in message and "--max-shape 1x1x1080x1920" in message


def test_gpu_model_mismatch_can_be_downgraded_to_a_warning(spec):
    other = RuntimeInfo("10.13.0.35", "NVIDIA GeForce RTX 4090", "8.9")
    with pytest.warns(RuntimeWarning, match="RTX 4090"):
        check_compatible(_meta(spec), other, allow_gpu_model_mismatch=True)
    with pytest.raises(EngineMismatchError):  # never for another architecture
        check_compatible(_meta(spec), RuntimeInfo("10.13.0.35", "NVIDIA A100", "8.0"), allow_gpu_model_mismatch=True)


# -- profile checks ------------------------------------------------------------------------------------
def test_inputs_inside_profile_pass(spec):
    meta = _meta(spec)
    for shape in [(1, 1, 64, 64), (1, 1, 1080, 1920), (1, 1, 333, 77)]:
        check_input_shape(meta, shape)
    assert meta.input_shape_limits() == {"min": (1, 1, 64, 64), "opt": (1, 1, 512, 512), "max": (1, 1, 1080, 1920)}
    limits = meta.backend_limits()  # what TensorRTBackend reports, so the Denoiser tiles inside the profile
    assert limits.is_dynamic and (limits.channels, limits.batch, limits.min_size) == (1, 1, 64)
    assert (limits.max_height, limits.max_width) == (1080, 1920)


def test_a_batching_profile_reports_its_max_batch(tmp_path):
    """A profile up to batch 8: ``Backend.run`` then sends the engine at most 8 samples per call."""
    batched = make_residual_conv_onnx(tmp_path / "b.onnx", ("batch", 1, "height", "width"))
    meta = _meta(resolve_spec(batched, min_shape="1x1x64x64", opt_shape="4x1x256x256", max_shape="8x1x512x512"))
    limits = meta.backend_limits()
    assert (limits.batch, limits.max_batch, limits.chunk) == (None, 8, 8)


def test_out_of_profile_input_suggests_a_wider_rebuild(spec):
    meta = _meta(spec)
    with pytest.raises(EngineMismatchError) as info:
        check_input_shape(meta, (1, 1, 2160, 3840))
    message = str(info.value)
    assert "outside the engine's optimisation profile" in message and "Tile the image" in message
    assert "--max-shape 1x1x2160x3840" in message and "--min-shape 1x1x64x64" in message
    with pytest.raises(EngineMismatchError, match="--min-shape 1x1x32x64"):
        check_input_shape(meta, (1, 1, 32, 100))
    with pytest.raises(EngineMismatchError, match="3 channels; the engine takes 1"):
        check_input_shape(meta, (1, 3, 100, 100))
    with pytest.raises(EngineMismatchError, match="expects 4 dimensions"):
        check_input_shape(meta, (100, 100))


def test_fixed_shape_engine_accepts_only_its_shape(tmp_path):
    fixed = resolve_spec(make_residual_conv_onnx(tmp_path / "f.onnx", (1, 1, 128, 96)))
    meta = _meta(fixed)
    check_input_shape(meta, (1, 1, 128, 96))
    assert meta.profile is None and meta.input_shape_limits()["max"] == (1, 1, 128, 96)
    limits = meta.backend_limits()
    assert not limits.is_dynamic and (limits.height, limits.width, limits.batch) == (128, 96, 1)
    with pytest.raises(EngineMismatchError, match="fixed input shape 1x1x128x96"):
        check_input_shape(meta, (1, 1, 96, 128))


# -- cache keys ----------------------------------------------------------------------------------------
def test_cache_key_covers_everything_that_makes_a_plan_unusable(spec):
    sha = onnx_fingerprint(spec.onnx_path)
    base = cache_key(sha, L4, spec)
    assert base == cache_key(sha, L4, spec) and len(base) == 64
    variants = {
        "onnx": cache_key("0" * 64, L4, spec),
        "tensorrt": cache_key(sha, dataclasses.replace(L4, tensorrt_version="10.14.1"), spec),
        "gpu": cache_key(sha, dataclasses.replace(L4, gpu_name="NVIDIA L40S"), spec),
        "cc": cache_key(sha, dataclasses.replace(L4, compute_capability="9.0"), spec),
        "precision": cache_key(sha, L4, spec.replace(precision="fp32")),
        "profile": cache_key(sha, L4, spec.replace(profile=spec.profile.widened_to((1, 1, 2160, 3840)))),
        "opt_level": cache_key(sha, L4, spec.replace(builder_optimization_level=5)),
    }
    assert len(set(variants.values()) | {base}) == len(variants) + 1
    # build-time-only settings and TensorRT build numbers do not split the cache
    assert cache_key(sha, L4, spec.replace(workspace_gib=8, timing_cache=None, output_path=Path("x.plan"))) == base
    assert cache_key(sha, dataclasses.replace(L4, tensorrt_version="10.13.0.99"), spec) == base


def test_onnx_fingerprint_covers_external_data(tmp_path):
    path = make_residual_conv_onnx(tmp_path / "ext.onnx", (1, 2, "h", "w"), external_data=True)
    info = read_onnx_graph(path)
    assert [p.name for p in info.external_data_files] == ["ext.onnx.data"]
    before = onnx_fingerprint(path)
    data = path.with_name("ext.onnx.data")
    data.write_bytes(data.read_bytes()[::-1])
    assert onnx_fingerprint(path) != before
    data.unlink()
    with pytest.raises(ModelFileError, match="external data ext.onnx.data"):
        onnx_fingerprint(path)


def test_graph_precision_comes_from_its_types(tmp_path):
    assert read_onnx_graph(make_residual_conv_onnx(tmp_path / "a.onnx", fp16=True)).precision == "fp16"
    assert read_onnx_graph(make_residual_conv_onnx(tmp_path / "b.onnx")).precision == "fp32"


# -- engine cache --------------------------------------------------------------------------------------
class PlanWriter:
    """The cache's build step for these tests: writes a plan file and its metadata, counts calls."""

    def __init__(self) -> None:
        self.calls: list[EngineBuildSpec] = []

    def __call__(self, spec: EngineBuildSpec, runtime: RuntimeInfo) -> EngineMetadata:
        self.calls.append(spec)
        spec.output_path.write_bytes(f"plan #{len(self.calls)}".encode())
        meta = _meta(spec, runtime)
        write_metadata(meta, spec.output_path)
        return meta


def test_cache_builds_once_then_reuses(onnx_fp16, tmp_path):
    writer = PlanWriter()
    cache = EngineCache(tmp_path / "engines", build=writer)
    plan = cache.get_or_build(onnx_fp16, {"max_shape": "1x1x1080x1920"}, runtime=L4)
    assert plan.parent == tmp_path / "engines" and plan.name.startswith("model_fp16-") and plan.suffix == ".plan"
    assert read_metadata(plan).profile.max == (1, 1, 1080, 1920)
    assert cache.get_or_build(onnx_fp16, {"max_shape": "1x1x1080x1920"}, runtime=L4) == plan
    assert len(writer.calls) == 1 and plan.read_bytes() == b"plan #1"
    assert [m.onnx_sha256 for m in cache.entries()] == [onnx_fingerprint(onnx_fp16)]


def test_cache_rebuilds_for_other_gpu_profile_or_model(onnx_fp16, tmp_path):
    writer = PlanWriter()
    cache = EngineCache(tmp_path / "engines", build=writer)
    first = cache.get_or_build(onnx_fp16, runtime=L4)
    h100 = RuntimeInfo("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0")
    second = cache.get_or_build(onnx_fp16, runtime=h100)
    third = cache.get_or_build(onnx_fp16, {"max_shape": "1x1x720x1280"}, runtime=L4)
    assert len({first, second, third}) == 3 and len(writer.calls) == 3
    make_residual_conv_onnx(onnx_fp16, fp16=True, seed=1)  # same path, new weights
    fourth = cache.get_or_build(onnx_fp16, runtime=L4)
    assert fourth != first and len(writer.calls) == 4


def test_cache_replaces_entries_with_broken_metadata(onnx_fp16, tmp_path):
    writer = PlanWriter()
    cache = EngineCache(tmp_path / "engines", build=writer)
    plan = cache.get_or_build(onnx_fp16, runtime=L4)
    metadata_path(plan).write_text("garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get_or_build(onnx_fp16, runtime=L4) == plan
    assert len(writer.calls) == 2 and read_metadata(plan).gpu_name == "NVIDIA L4"


def test_cache_reports_a_build_that_left_nothing(onnx_fp16, tmp_path):
    cache = EngineCache(tmp_path / "engines", build=lambda spec, runtime: None)
    with pytest.raises(ModelFileError, match="did not leave a usable plan"):
        cache.get_or_build(onnx_fp16, runtime=L4)
