"""``n3deploy parity``: the same noisy images through every backend, one table, non-zero on failure."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..backends import BACKENDS
from ..precision import PRECISIONS

DESCRIPTION = """\
Check that exported models compute what the PyTorch model computes. The images of --images get
Gaussian noise of --sigma (the evaluation protocol: image i uses default_rng([seed, i]), noisy not
clipped) and go through PyTorch FP32 (the reference), ONNX Runtime FP32 (--onnx), ONNX Runtime on
the mixed FP16 graph (--onnx-fp16), TensorRT (--engine, GPU machines) and any registered backend
(--backend NAME, with --precision: e.g. OpenVINO's BF16 plan) via polygraphy's runners and
Comparator. The table shows, per backend: max/mean abs error vs the reference, PSNR against
the clean images (outputs clipped to [0, 1]), ΔPSNR vs the reference and the NaN/Inf count.

Exits with 1 when a tolerance is exceeded: FP32 max abs error > --fp32-atol (1e-4), FP16/BF16
|ΔPSNR| > --fp16-dpsnr (0.02 dB) or any NaN/Inf. Fixed-size graphs get center crops of the images.

examples:
  n3deploy parity --checkpoint n3net_sigma25.safetensors --onnx model.onnx --images set12/ --sigma 25
  n3deploy parity --checkpoint M.safetensors --onnx model.onnx --onnx-fp16 model_fp16.onnx \\
      --engine model_fp16.plan --images set12/ --json parity.json
  n3deploy parity --checkpoint M.safetensors --onnx model.onnx --backend openvino --precision bf16 --images set12/
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "parity",
        help="compare PyTorch, ONNX Runtime (FP32/FP16) and TensorRT outputs on noisy images",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from ..models import model_arg

    p.add_argument("--checkpoint", type=model_arg, required=True,
                   help="the .safetensors checkpoint or registry name (reference, PyTorch FP32)")
    p.add_argument("--onnx", type=Path, default=None, help="FP32 ONNX graph")
    p.add_argument("--onnx-fp16", type=Path, default=None, help="mixed-precision FP16 ONNX graph")
    p.add_argument("--engine", type=Path, default=None, help="TensorRT plan (.plan/.engine); needs TensorRT and a GPU")
    p.add_argument("--torch-fp16", action="store_true",
                   help="also run the checkpoint in PyTorch under the FP16 graph's precision plan (FP16 CNNs, FP32 KNN) "
                        "on --device: real GPU FP16 numerics with --device cuda where TensorRT is not installed")
    p.add_argument("--float64", action="store_true",
                   help="also run the checkpoint in float64 (PyTorch): shows how far float32 itself is from exact on "
                        "these images, the yardstick for FP32 differences of sharply selecting (low-temperature) models")
    p.add_argument("--backend", action="append", default=[], choices=list(BACKENDS),
                   help="also run --onnx (the checkpoint, for torch) through this backend at --precision; repeatable")
    p.add_argument("--precision", default=None, choices=list(PRECISIONS),
                   help="precision of the --backend rows (default: FP32, or what the graph was built in)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of the --backend rows (onnxruntime, openvino)")
    p.add_argument("--images", type=Path, required=True, help="folder of clean test images")
    p.add_argument("--sigma", type=float, default=None, help="noise level, 0-255 scale (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--device", default="cpu", help="device for PyTorch and ONNX Runtime: cpu, cuda[:N], auto (default: cpu)")
    p.add_argument("--fp32-atol", type=float, default=1e-4, help="FP32 max abs error tolerance (default: 1e-4)")
    p.add_argument("--fp16-dpsnr", type=float, default=0.02, help="FP16 |ΔPSNR| tolerance in dB (default: 0.02)")
    p.add_argument("--json", type=Path, default=None, help="also write the full report (per image) as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..backends import get_backend, load_backend
    from ..errors import N3DeployError
    from ..parity import Tolerances, load_cases, onnxrt_runner, run_parity

    reference = load_backend(args.checkpoint, "torch", device=args.device)
    sigma = args.sigma if args.sigma is not None else reference.metadata.get("sigma")
    if sigma is None:
        raise N3DeployError(f"{args.checkpoint.name} records no noise level: pass --sigma")
    others = []
    for label, path in (("onnxruntime-fp32", args.onnx), ("onnxruntime-fp16", args.onnx_fp16)):
        if path is not None:
            others.append((label, onnxrt_runner(load_backend(path, "onnxruntime", device=args.device))))
    if args.engine is not None:
        others.append(("tensorrt", _tensorrt_runner(args.engine, args.device)))
    if args.torch_fp16:
        others.append(("torch-fp16", load_backend(args.checkpoint, "torch", device=args.device, precision="fp16")))
    if args.float64:
        others.append(("torch-fp64", load_backend(args.checkpoint, "torch", device=args.device, precision="fp64")))
    for name in args.backend:
        model = args.checkpoint if get_backend(name).accepts(args.checkpoint) else args.onnx
        if model is None:
            raise N3DeployError(f"--backend {name} runs the --onnx graph: pass --onnx")
        opts = {"threads": args.threads} if args.threads else {}
        backend = load_backend(model, name, device=args.device, precision=args.precision, **opts)
        others.append((f"{name}-{backend.precision}", backend))
    if not others:
        raise N3DeployError("nothing to compare: pass --onnx, --onnx-fp16, --engine, --backend, --torch-fp16 and/or --float64")
    cases = load_cases(args.images, float(sigma), reference.input_shape_limits.channels, args.seed, args.limit)
    report = run_parity(
        reference, others, cases, sigma=float(sigma), seed=args.seed,
        tolerances=Tolerances(fp32_max_abs=args.fp32_atol, fp16_delta_psnr=args.fp16_dpsnr),
    )
    print(report.format())
    if args.json is not None:
        report.write_json(args.json)
        print(f"wrote {args.json}")
    return 0 if report.ok else 1


def _tensorrt_runner(engine: Path, device: str):
    """Polygraphy's TrtRunner for a plan (after n3deploy's engine metadata checks)."""
    from ..errors import BackendUnavailableError

    try:
        from ..tensorrt.runner import polygraphy_trt_runner
    except ImportError as exc:
        raise BackendUnavailableError(f"TensorRT parity needs n3deploy's TensorRT support and TensorRT itself ({exc})") from None
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    from ..parity import RunnerSpec

    runner, meta = polygraphy_trt_runner(engine, device=index, name="tensorrt")
    shapes = meta.input_shape_limits()  # {"min", "opt", "max"} NCHW
    fixed = None
    if shapes and shapes.get("min") == shapes.get("max"):
        from ..backends.base import InputShapeLimits

        b, c, h, w = shapes["min"]
        fixed = InputShapeLimits(channels=c, batch=b, height=h, width=w)
    return RunnerSpec(runner, meta.precision, [f"TensorRT {meta.tensorrt_version} ({meta.gpu_name})"], fixed)
