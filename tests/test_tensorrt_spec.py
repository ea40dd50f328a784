"""Engine build spec, shapes and the trtexec rendering: all CPU-side, no TensorRT needed."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from n3deploy.cli import main
from n3deploy.errors import ModelFileError
from n3deploy.tensorrt.env import tensorrt_available
from n3deploy.tensorrt.sample_graphs import make_residual_conv_onnx
from n3deploy.tensorrt.shapes import ProfileShapes, ShapeError, format_shape, parse_shape
from n3deploy.tensorrt.spec import EngineBuildSpec, EngineSpecError, resolve_spec

REPO = Path(__file__).resolve().parents[1]
TRT_AVAILABLE, TRT_REASON = tensorrt_available()

# Every flag n3deploy may emit, each checked against `trtexec --help` (TensorRT 10.x Build/Inference
# Options) and the TensorRT "Command-Line Programs" / 10.x->11.x trtexec migration pages.
DOCUMENTED_TRTEXEC_FLAGS = {
    "--onnx", "--saveEngine", "--stronglyTyped", "--minShapes", "--optShapes", "--maxShapes",
    "--timingCacheFile", "--memPoolSize", "--builderOptimizationLevel", "--skipInference",
}
# Removed in TensorRT 11 (precision flags, weak-typing constraints) or in TensorRT 10 (--workspace).
FORBIDDEN_TRTEXEC_FLAGS = {
    "--fp16", "--bf16", "--int8", "--fp8", "--best", "--precisionConstraints", "--layerPrecisions",
    "--layerOutputTypes", "--workspace", "--explicitBatch", "--buildOnly",
}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("graphs")
    return {
        "dyn16": make_residual_conv_onnx(d / "model_fp16.onnx", (1, 1, "height", "width"), fp16=True),
        "dyn32": make_residual_conv_onnx(d / "model.onnx", (1, 1, "h", "w")),
        "fixed": make_residual_conv_onnx(d / "fixed.onnx", (1, 1, 256, 256)),
        "named": make_residual_conv_onnx(d / "named.onnx", (1, 3, "h", "w"), input_name="image:0"),
        "batch": make_residual_conv_onnx(d / "batch.onnx", ("n", 1, "h", "w")),
        "half_w": make_residual_conv_onnx(d / "half_w.onnx", (1, 1, 480, "w")),
    }


# -- shapes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [("1x1x64x64", (1, 1, 64, 64)), (" 2X3x5x7 ", (2, 3, 5, 7)), ("8", (8,))])
def test_parse_shape_accepts_trtexec_spelling(text, expected):
    assert parse_shape(text) == expected
    assert format_shape(expected) == "x".join(str(d) for d in expected)


@pytest.mark.parametrize("text", ["", "1x1x64x", "1x1x-1x64", "1x1x0x64", "1,1,64,64", "1x1xax64", "64.5x1"])
def test_parse_shape_rejects_with_a_hint(text):
    with pytest.raises(ShapeError, match="NxCxHxW|zero dimension"):
        parse_shape(text, what="--min-shape")


def test_profile_requires_min_le_opt_le_max_and_equal_ranks():
    p = ProfileShapes((1, 1, 64, 64), (1, 1, 512, 512), (1, 1, 2160, 3840))
    assert p.contains((1, 1, 64, 3840)) and not p.contains((1, 1, 63, 64)) and not p.contains((1, 1, 64))
    with pytest.raises(ShapeError, match="axis 2 has min=600"):
        ProfileShapes((1, 1, 600, 64), (1, 1, 512, 512), (1, 1, 2160, 3840))
    with pytest.raises(ShapeError, match="same number of dimensions"):
        ProfileShapes((1, 1, 64), (1, 1, 512, 512), (1, 1, 2160, 3840))
    wider = p.widened_to((1, 1, 4000, 32))
    assert wider.min == (1, 1, 64, 32) and wider.max == (1, 1, 4000, 3840) and wider.opt == p.opt
    assert ProfileShapes.from_dict(p.to_dict()) == p


# -- resolve_spec -------------------------------------------------------------------------------------
def test_dynamic_graph_gets_default_profile_and_graph_precision(graphs):
    spec = resolve_spec(graphs["dyn16"])
    assert spec.is_dynamic and spec.static_input_shape is None
    assert spec.profile == ProfileShapes((1, 1, 64, 64), (1, 1, 512, 512), (1, 1, 2160, 3840))
    assert spec.precision == "fp16" and resolve_spec(graphs["dyn32"]).precision == "fp32"
    assert spec.input_name == "noisy"
    assert spec.output_path == graphs["dyn16"].with_suffix(".plan")


def test_input_name_and_fixed_dims_are_read_from_the_graph(graphs):
    spec = resolve_spec(graphs["named"])
    assert spec.input_name == "image:0"
    assert spec.profile.min == (1, 3, 64, 64)  # channels from the graph
    assert resolve_spec(graphs["half_w"]).profile.min == (1, 1, 480, 64)  # fixed height kept
    batch = resolve_spec(graphs["batch"], max_shape="4x1x512x512")
    assert batch.profile.min[0] == 1 and batch.profile.max[0] == 4


def test_partial_profiles_bend_defaults_to_given_shapes(graphs):
    spec = resolve_spec(graphs["dyn16"], max_shape="1x1x256x256")
    assert spec.profile == ProfileShapes((1, 1, 64, 64), (1, 1, 256, 256), (1, 1, 256, 256))
    spec = resolve_spec(graphs["dyn16"], min_shape="1x1x1024x1024")
    assert spec.profile.opt == (1, 1, 1024, 1024) and spec.profile.max == (1, 1, 2160, 3840)
    spec = resolve_spec(graphs["dyn16"], opt_shape=[1, 1, 4000, 64])
    assert spec.profile.max == (1, 1, 4000, 3840) and spec.profile.min == (1, 1, 64, 64)


def test_given_shapes_must_respect_graph_and_ordering(graphs):
    with pytest.raises(ShapeError, match="axis 1 is fixed to 1"):
        resolve_spec(graphs["dyn16"], max_shape="1x3x512x512")
    with pytest.raises(ShapeError, match="4 dimensions"):
        resolve_spec(graphs["dyn16"], max_shape="1x512x512")
    with pytest.raises(ShapeError, match="min <= opt <= max"):
        resolve_spec(graphs["dyn16"], min_shape="1x1x600x600", max_shape="1x1x500x500")


def test_fixed_graph_gets_no_profile_and_rejects_other_shapes(graphs):
    spec = resolve_spec(graphs["fixed"])
    assert spec.profile is None and spec.static_input_shape == (1, 1, 256, 256)
    # the graph's own shape is redundant, so accepted
    assert resolve_spec(graphs["fixed"], opt_shape="1x1x256x256").profile is None
    with pytest.raises(ShapeError, match="fixed input shape 1x1x256x256.*--max-shape 1x1x512x512"):
        resolve_spec(graphs["fixed"], max_shape="1x1x512x512")


def test_graph_io_must_be_single_float32(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("noisy", TensorProto.FLOAT16, [1, 1, "h", "w"])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT16, [1, 1, "h", "w"])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["noisy"], ["out"])], "g", [x], [y]))
    onnx.save(model, tmp_path / "half_io.onnx")
    with pytest.raises(ModelFileError, match="float16.*keep_io_types"):
        resolve_spec(tmp_path / "half_io.onnx")
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "g", [a, b], [c]))
    onnx.save(model, tmp_path / "two_inputs.onnx")
    with pytest.raises(ModelFileError, match="exactly one graph input"):
        resolve_spec(tmp_path / "two_inputs.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not a readable ONNX"):
        resolve_spec(tmp_path / "junk.onnx")
    with pytest.raises(ModelFileError, match="not found"):
        resolve_spec(tmp_path / "missing.onnx")


def test_spec_invariants():
    base = dict(onnx_path=Path("m.onnx"), output_path=Path("m.plan"), input_name="noisy",
                profile=None, static_input_shape=(1, 1, 8, 8), precision="fp32")
    EngineBuildSpec(**base)
    for bad in ({"workspace_gib": 0}, {"builder_optimization_level": 6}, {"strongly_typed": False},
                {"static_input_shape": None}):
        with pytest.raises(EngineSpecError):
            EngineBuildSpec(**{**base, **bad})


# -- trtexec rendering --------------------------------------------------------------------------------
def test_trtexec_args_for_dynamic_fp16_graph(graphs, tmp_path):
    spec = resolve_spec(graphs["dyn16"], tmp_path / "model.plan", timing_cache=tmp_path / "trt.cache",
                        workspace_gib=4, builder_optimization_level=3)
    onnx_path, plan, cache = graphs["dyn16"], tmp_path / "model.plan", tmp_path / "trt.cache"
    assert spec.to_trtexec_args() == [
        "trtexec", f"--onnx={onnx_path}", f"--saveEngine={plan}", "--stronglyTyped",
        "--minShapes=noisy:1x1x64x64", "--optShapes=noisy:1x1x512x512", "--maxShapes=noisy:1x1x2160x3840",
        f"--timingCacheFile={cache}", "--memPoolSize=workspace:4096", "--builderOptimizationLevel=3",
        "--skipInference",
    ]
    assert shlex.split(spec.to_trtexec_command("/opt/trt/bin/trtexec")) == ["/opt/trt/bin/trtexec", *spec.to_trtexec_args()[1:]]


@pytest.mark.parametrize("key", ["dyn16", "dyn32", "fixed", "named", "batch"])
def test_trtexec_flags_are_all_documented_and_none_removed(graphs, key):
    args = resolve_spec(graphs[key], timing_cache="c.cache", workspace_gib=0.5, builder_optimization_level=5).to_trtexec_args()
    flags = {a.split("=", 1)[0] for a in args[1:]}
    assert flags <= DOCUMENTED_TRTEXEC_FLAGS, flags - DOCUMENTED_TRTEXEC_FLAGS
    assert not flags & FORBIDDEN_TRTEXEC_FLAGS
    assert "--stronglyTyped" in flags and "--skipInference" in flags
    assert ("--minShapes" in flags) == (key != "fixed")


def test_trtexec_quotes_tensor_names_with_separators(graphs):
    args = resolve_spec(graphs["named"]).to_trtexec_args()
    assert "--minShapes='image:0':1x3x64x64" in args


def test_spec_round_trips_through_dict_and_cli(graphs, tmp_path):
    spec = resolve_spec(graphs["dyn16"], tmp_path / "m.plan", max_shape="1x1x1080x1920", timing_cache=tmp_path / "t.cache",
                        workspace_gib=2.5, builder_optimization_level=4)
    assert EngineBuildSpec.from_dict(spec.to_dict()) == spec
    from n3deploy.cli import build_parser

    args = build_parser().parse_args(spec.to_cli_args()[1:])
    again = resolve_spec(args.onnx, args.output, min_shape=args.min_shape, opt_shape=args.opt_shape,
                         max_shape=args.max_shape, timing_cache=args.timing_cache, workspace_gib=args.workspace_gb,
                         builder_optimization_level=args.opt_level)
    assert again == spec


# -- command line -------------------------------------------------------------------------------------
def test_cli_print_trtexec_needs_no_tensorrt(graphs, tmp_path, capsys):
    plan = tmp_path / "model.plan"
    assert main(["build-engine", str(graphs["dyn16"]), "-o", str(plan), "--print-trtexec"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == resolve_spec(graphs["dyn16"], plan).to_trtexec_command()
    assert not plan.exists()
    assert main(["build-engine", str(graphs["dyn16"]), "-o", str(plan), "--print-trtexec", "--print-format", "nul",
                 "--trtexec", "/x/trtexec"]) == 0
    argv = capsys.readouterr().out.split("\0")
    assert argv[-1] == "" and argv[:-1] == resolve_spec(graphs["dyn16"], plan).to_trtexec_args("/x/trtexec")


def test_cli_reports_bad_shapes_as_errors(graphs, capsys):
    assert main(["build-engine", str(graphs["fixed"]), "--max-shape", "1x1x512x512", "--print-trtexec"]) == 1
    assert "fixed input shape" in capsys.readouterr().err


@pytest.mark.skipif(TRT_AVAILABLE, reason="TensorRT is importable here, so build-engine would really build")
def test_build_engine_without_tensorrt_fails_clearly(graphs, tmp_path, capsys):
    plan = tmp_path / "model.plan"
    rc = main(["build-engine", str(graphs["dyn16"]), "-o", str(plan)])
    err = capsys.readouterr().err
    assert rc != 0 and not plan.exists()
    assert "needs TensorRT >= 10" in err and "--print-trtexec" in err and 'pip install "n3deploy[gpu]"' in err
    assert main(["build-engine", str(graphs["dyn16"]), "-o", str(plan), "--metadata-only"]) != 0


# -- export/build_engine.sh ---------------------------------------------------------------------------
SCRIPT = REPO / "export" / "build_engine.sh"


def test_build_script_does_not_hardcode_trtexec_flags():
    text = SCRIPT.read_text()
    assert "--print-trtexec" in text
    for flag in DOCUMENTED_TRTEXEC_FLAGS | FORBIDDEN_TRTEXEC_FLAGS:
        assert flag + "=" not in text and f" {flag} " not in text and not text.count(f"{flag}\n"), flag


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_build_script_runs_exactly_the_printed_command(graphs, tmp_path):
    n3deploy_exe = Path(sys.executable).parent / "n3deploy"
    if not n3deploy_exe.exists():
        pytest.skip(f"the n3deploy console script is not installed next to {sys.executable}")
    fake = tmp_path / "bin" / "trtexec"
    fake.parent.mkdir()
    record = tmp_path / "argv.bin"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "{record}"\n')
    fake.chmod(0o755)
    plan = tmp_path / "my model.plan"
    env = {**os.environ, "TRTEXEC": str(fake), "N3DEPLOY": str(n3deploy_exe)}
    proc = subprocess.run(["bash", str(SCRIPT), str(graphs["dyn16"]), "-o", str(plan), "--max-shape", "1x1x1080x1920"],
                          env=env, capture_output=True, text=True, timeout=120)
    expected = resolve_spec(graphs["dyn16"], plan, max_shape="1x1x1080x1920").to_trtexec_args(str(fake))
    assert record.read_bytes().split(b"\0")[:-1] == [a.encode() for a in expected[1:]], proc.stderr
    if not TRT_AVAILABLE:  # trtexec "succeeded" but the metadata needs TensorRT's Python package
        assert proc.returncode == 3 and "--metadata-only" in proc.stderr
