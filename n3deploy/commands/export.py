"""``n3deploy export``: a checkpoint -> one audited, verified ONNX file (FP32 or mixed FP16)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export.onnx_export import DEFAULT_MAX_BATCH, DEFAULT_MAX_HEIGHT, DEFAULT_MAX_WIDTH, DEFAULT_OPSET

DESCRIPTION = """\
Export an n3deploy checkpoint to a single self-contained ONNX file for ONNX Runtime and TensorRT.

By default the graph takes any height/width (symbolic dims, every shape computed in the graph
from the input shape) from the model's minimum (15 px) up to --max-height x --max-width.
--height/--width give a fixed-size graph instead. --fp16 writes the strongly typed mixed-precision
graph TensorRT 10/11 builds FP16 engines from: convolutions in FP16, the KNN distance/softmax
chain in FP32 behind explicit Casts, FP32 input and output.

The batch axis: --batch dynamic gives a symbolic batch (1 to --max-batch) so the Denoiser
(batch_tiles=N), n3deploy serve and Triton can send several same-size tiles in one call;
--batch N fixes it. Default: 1 for a dynamic-size graph, dynamic for a fixed-size one (a fully
static graph peaks 2-3x higher under ONNX Runtime's default SessionOptions, e.g. in Triton).

Every export is simplified (onnxslim), passes onnx.checker's full check, is audited for TensorRT
(op allow-list, input-derived shapes, < 2^31 elements per tensor at the maximum size) and is
verified against PyTorch with ONNX Runtime; any failure writes nothing.

examples:
  n3deploy export --checkpoint n3net_sigma25.safetensors -o model.onnx
  n3deploy export --checkpoint n3net_sigma25.safetensors -o model_fp16.onnx --fp16
  n3deploy export --checkpoint n3net_sigma25.safetensors -o model_321x481.onnx --height 321 --width 481
  n3deploy export --checkpoint n3net_sigma25.safetensors -o model_b.onnx --batch dynamic --max-height 1024 --max-width 1024
"""


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """The export options (shared by ``n3deploy export`` and ``export/to_onnx.py``)."""
    from ..models import model_arg

    p.add_argument("--checkpoint", type=model_arg, required=True, help="n3deploy .safetensors checkpoint or registry name (tiny-blind)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .onnx path")
    p.add_argument("--height", type=int, default=None, help="fixed input height (default: dynamic)")
    p.add_argument("--width", type=int, default=None, help="fixed input width (default: dynamic)")
    p.add_argument("--batch", type=_batch_arg, default=None,
                   help="batch size of the graph's input, or 'dynamic' for a symbolic batch axis "
                        "(default: 1 for a dynamic-size graph, dynamic for --height/--width)")
    p.add_argument("--max-batch", type=int, default=None,
                   help=f"largest batch of a dynamic batch axis, audited for the 2^31 limit (default: {DEFAULT_MAX_BATCH}; "
                        "for the fixed-size default, at most what keeps every tensor under 2^31 elements)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, >= 18 (default: {DEFAULT_OPSET})")
    p.add_argument("--fp16", action="store_true", help="write the mixed-precision FP16 graph (FP32 KNN chain and I/O)")
    p.add_argument("--sigma", type=float, default=None, help="noise level to record (default: the checkpoint's)")
    p.add_argument("--max-height", type=int, default=DEFAULT_MAX_HEIGHT,
                   help=f"largest height of a dynamic graph, audited for the 2^31 limit (default: {DEFAULT_MAX_HEIGHT})")
    p.add_argument("--max-width", type=int, default=DEFAULT_MAX_WIDTH,
                   help=f"largest width of a dynamic graph (default: {DEFAULT_MAX_WIDTH})")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check after writing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _batch_arg(text: str) -> "int | str":
    """``--batch``: a positive integer or ``dynamic``."""
    if text.strip().lower() == "dynamic":
        return "dynamic"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'dynamic', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"the batch must be >= 1, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (FP32 or mixed FP16), audited for TensorRT",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_export_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..export.onnx_export import export_onnx

    model = load_checkpoint(args.checkpoint)
    source = {k: v for k, v in getattr(model, "metadata", {}).items() if k != "sigma"}
    source["checkpoint"] = args.checkpoint.name
    result = export_onnx(
        model,
        args.output,
        height=args.height,
        width=args.width,
        batch=args.batch,
        max_batch=args.max_batch,
        opset=args.opset,
        fp16=args.fp16,
        sigma=args.sigma,
        max_height=args.max_height,
        max_width=args.max_width,
        verify=not args.no_verify,
        progress=not args.quiet,
        source=source,
    )
    print(result.summary())
    return 0
