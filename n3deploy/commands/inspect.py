"""``n3deploy inspect``: print the TensorRT audit of an ONNX graph (no PyTorch needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Print what an ONNX graph contains and whether TensorRT can build it: inputs/outputs, n3deploy
metadata (config, sigma, version, input spec), op histogram, the precision (fp16/fp32) of each
part of the network, and the largest tensors at the maximum input size (TensorRT needs fewer
than 2^31 elements per tensor), and which registered backends open the file, at which precisions,
and whether each can run on this machine. Exits with 1 when the audit fails.

With --images, an FP16 graph is also run (ONNX Runtime, CPU) on those images with Gaussian noise
of --sigma, and the largest magnitude of every FP16 tensor is reported against FP16's limit 65504
(the overflow headroom); exit code 1 if any FP16 tensor overflows. --images also prints each
image's estimated noise level as it is (n3deploy.estimate_noise, sigma on the 0-255 scale), marked
when it is far from the graph's sigma; without a model, only that table is printed (to choose
between a sigma-specific model and the blind one, `n3deploy models`).

examples:
  n3deploy inspect model.onnx
  n3deploy inspect model_fp16.onnx --max-height 4320 --max-width 7680
  n3deploy inspect model_fp16.onnx --images set12/ --sigma 25
  n3deploy inspect --images photos/                     # noise estimates only
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="audit an ONNX graph for TensorRT: ops, shapes, sizes, precision, metadata",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", type=Path, nargs="?", default=None, help="an .onnx file (optional with --images)")
    p.add_argument("--max-height", type=int, default=None, help="audit at this height (default: the declared maximum)")
    p.add_argument("--max-width", type=int, default=None, help="audit at this width (default: the declared maximum)")
    p.add_argument("--top", type=int, default=5, help="how many of the largest tensors to list (default: 5)")
    p.add_argument("--images", type=Path, default=None, help="folder of clean images: measure the FP16 headroom on them")
    p.add_argument("--sigma", type=float, default=None, help="noise level for --images (default: the graph's sigma)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export.audit import audit_model

    if args.model is None:
        if args.images is None:
            raise SystemExit("n3deploy inspect: give an .onnx file, --images DIR, or both")
        print(format_noise_estimates(args.images, None))
        return 0

    report = audit_model(args.model, max_height=args.max_height, max_width=args.max_width)
    print(report.format(top=args.top))
    print(format_backends(args.model))
    ok = report.ok
    if args.images is not None:
        print(format_noise_estimates(args.images, report.metadata.sigma if report.metadata else None))
        ok = _headroom(args, report) and ok
    return 0 if ok else 1


def format_noise_estimates(folder: Path, sigma: float | None) -> str:
    """Each image's estimated noise sigma (0-255), marked ``far`` when far from the model's ``sigma``."""
    from ..errors import InvalidImageError, N3DeployError
    from ..imageio import IMAGE_SUFFIXES, read_image
    from ..noise import estimate_noise, is_far_from

    files = sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) if Path(folder).is_dir() else []
    if not files:
        raise N3DeployError(f"{folder}: no images found")
    against = f" (model sigma={sigma:g}; far: |est - sigma| > max(5, 0.35 sigma))" if sigma is not None else ""
    lines = [f"estimated noise of the images in {folder}, sigma on the 0-255 scale{against}:"]
    width = max(len(f.name) for f in files)
    for f in files:
        try:
            est = estimate_noise(read_image(f))
        except InvalidImageError as exc:
            lines.append(f"  {f.name:<{width}}  -  ({exc})")
            continue
        mark = "  far: use the blind model (tiny-blind)" if sigma is not None and is_far_from(est, sigma) else ""
        lines.append(f"  {f.name:<{width}}  {est:6.2f}{mark}")
    return "\n".join(lines)


def format_backends(model: Path) -> str:
    """The registry's backends that open ``model``: precisions, and availability here (or why not)."""
    from ..backends import BACKENDS

    lines = ["backends that open this file (n3deploy --backend NAME --precision P):"]
    for name, spec in BACKENDS.items():
        if spec.accepts(model):
            reason = spec.probe()
            state = "available here" if reason is None else f"not here: {reason}"
            lines.append(f"  {name:<12} {'/'.join(spec.precisions):<20} {'/'.join(spec.devices):<20} {state}")
    return "\n".join(lines)


def _headroom(args: argparse.Namespace, report) -> bool:
    """Print the FP16 headroom of the graph on ``args.images``; False if an FP16 tensor overflowed."""
    from ..errors import N3DeployError
    from ..export.fp16 import fp16_tensor_ranges
    from ..parity import crop_cases, load_cases

    meta = report.metadata
    sigma = args.sigma if args.sigma is not None else (meta.sigma if meta else None)
    if sigma is None:
        raise N3DeployError(f"{args.model.name} records no noise level: pass --sigma")
    spec = meta.input_spec if meta else None
    channels = spec.channels if spec else 1
    cases = load_cases(args.images, float(sigma), channels)
    if spec is not None and not spec.is_dynamic:
        cases = crop_cases(cases, (spec.height, spec.width))
    headroom = fp16_tensor_ranges(args.model, [c.noisy[None] for c in cases], progress=True)
    if not headroom.tensors:
        print("FP16 headroom: the graph stores no FP16 tensors")
        return True
    print(f"FP16 headroom on {len(cases)} images of {args.images} at sigma={sigma:g}:")
    print(headroom.format(top=args.top))
    return not headroom.overflowed
