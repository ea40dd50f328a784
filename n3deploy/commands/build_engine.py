"""``n3deploy build-engine``: ONNX -> TensorRT plan (+ metadata), or the equivalent trtexec command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  # build on this GPU machine (TensorRT >= 10), dynamic 64x64 .. 2160x3840 profile tuned for 512x512
  n3deploy build-engine model_fp16.onnx -o model.plan --timing-cache trt.cache

  # the same build as a trtexec command line (works without TensorRT; export/build_engine.sh runs it)
  n3deploy build-engine model_fp16.onnx -o model.plan --print-trtexec

  # after a trtexec build, record model.plan.json so n3deploy can check and load the plan
  n3deploy build-engine model_fp16.onnx -o model.plan --metadata-only

Precision comes from the ONNX graph itself: the network is strongly typed (TensorRT >= 10), so an
FP16 graph with FP32 I/O (n3deploy's FP16 export) gives an FP16 engine. There is no --fp16 flag;
TensorRT 11 removed weak typing. Engines only load on the same TensorRT release and GPU they were
built for; the metadata written next to the plan lets n3deploy refuse mismatches with a rebuild hint.
See docs/tensorrt.md.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-engine",
        help="build a TensorRT engine (.plan) from an ONNX graph, or print the equivalent trtexec command",
        description=(
            "Build a TensorRT engine from an n3deploy ONNX graph with the TensorRT Python API: strongly "
            "typed network, one optimisation profile for dynamic height/width (fixed-shape graphs get none), "
            "timing-cache reuse, atomic writes of the plan and of its metadata (PLAN.json).\n\n" + EXAMPLES
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("onnx", type=Path, help="the ONNX graph (e.g. model_fp16.onnx)")
    p.add_argument("-o", "--output", type=Path, default=None, help="plan to write (default: ONNX path with .plan)")
    shapes = p.add_argument_group(
        "optimisation profile (graphs with dynamic height/width only)",
        "Shapes are NxCxHxW, e.g. 1x1x512x512. Unset ones default to 1xCx64x64 / 1xCx512x512 / 1xCx2160x3840. "
        "Inputs outside [min, max] are refused at run time. A fixed-shape graph gets no profile; passing shapes "
        "that differ from its shape is an error.",
    )
    shapes.add_argument("--min-shape", metavar="NxCxHxW", help="smallest input the engine accepts")
    shapes.add_argument("--opt-shape", metavar="NxCxHxW", help="shape TensorRT tunes kernels for")
    shapes.add_argument("--max-shape", metavar="NxCxHxW", help="largest input the engine accepts")
    build = p.add_argument_group("build options")
    build.add_argument("--timing-cache", type=Path, default=None, metavar="FILE",
                       help="load tactic timings from FILE if present and save them back (speeds up rebuilds)")
    build.add_argument("--workspace-gb", type=float, default=None, metavar="N",
                       help="limit the builder's workspace memory pool to N GiB (default: TensorRT's, the GPU's memory)")
    build.add_argument("--opt-level", type=int, default=None, metavar="0-5", dest="opt_level",
                       help="TensorRT builder optimisation level (default 3; higher builds longer)")
    build.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    build.add_argument("--verbose", action="store_true", help="verbose TensorRT builder log")
    alt = p.add_argument_group("trtexec")
    alt.add_argument("--print-trtexec", action="store_true",
                     help="print the equivalent trtexec command and exit (needs no TensorRT)")
    alt.add_argument("--print-format", choices=["shell", "nul"], default="shell",
                     help="with --print-trtexec: one shell-quoted line, or NUL-separated arguments for scripts")
    alt.add_argument("--trtexec", default="trtexec", metavar="PATH", help="trtexec executable to print (default: trtexec)")
    alt.add_argument("--metadata-only", action="store_true",
                     help="do not build: check that the existing plan (built by trtexec from these options) "
                          "loads with this TensorRT and GPU, and write its metadata")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tensorrt.spec import resolve_spec

    spec = resolve_spec(
        args.onnx,
        args.output,
        min_shape=args.min_shape,
        opt_shape=args.opt_shape,
        max_shape=args.max_shape,
        timing_cache=args.timing_cache,
        workspace_gib=args.workspace_gb,
        builder_optimization_level=args.opt_level,
    )
    if args.print_trtexec:
        argv = spec.to_trtexec_args(args.trtexec)
        if args.print_format == "nul":
            sys.stdout.write("".join(a + "\0" for a in argv))
        else:
            print(spec.to_trtexec_command(args.trtexec))
        return 0

    from ..errors import BackendUnavailableError
    from ..tensorrt.builder import build_engine, record_trtexec_plan

    try:
        if args.metadata_only:
            meta = record_trtexec_plan(spec, device=args.device)
            action = "recorded metadata for"
        else:
            meta = build_engine(spec, device=args.device, verbose=args.verbose)
            action = "built"
    except BackendUnavailableError as exc:
        if args.metadata_only:
            raise BackendUnavailableError(
                f"{exc} No metadata was written; run this command where the plan will be used."
            ) from exc
        hint = spec.to_cli_command() + " --print-trtexec"
        raise BackendUnavailableError(
            f"{exc} Nothing was built. The equivalent trtexec command (for a machine with TensorRT's trtexec) "
            f"is printed by: {hint}"
        ) from exc
    from ..tensorrt.metadata import metadata_path
    from ..tensorrt.shapes import format_shape

    shape = meta.profile.describe() if meta.profile else f"fixed {format_shape(meta.static_input_shape or ())}"
    print(f"{action} {spec.output_path} ({meta.precision}, {shape})")
    print(f"  TensorRT {meta.tensorrt_version} on {meta.gpu_name} (compute capability {meta.compute_capability})")
    print(f"  metadata: {metadata_path(spec.output_path)}")
    return 0
