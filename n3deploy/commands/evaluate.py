"""``n3deploy eval``: PSNR/SSIM of a model (any backend) on a folder of clean images."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..backends import BACKENDS, Backend
from ..precision import PRECISIONS

PROTOCOL = """\
noise protocol (fixed, so numbers are comparable between models, backends and machines):
  images are read in sorted file-name order as float [0,1]; image i (0-based) gets its own
  generator numpy.random.default_rng([SEED, i]) and noise sigma/255 * standard_normal(shape)
  in float64, added without clipping; the model output is clipped to [0,1]; PSNR and SSIM
  are scikit-image's with data_range=1; the mean is over images.

examples:
  n3deploy eval --model runs/tiny25/best.safetensors --images data/set12 --sigma 25
  n3deploy eval --model n3net.onnx --backend onnxruntime --images data/set12 --sigma 25 --json set12.json
  n3deploy eval --model n3net.onnx --backend openvino --precision bf16 --images data/set12
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure PSNR/SSIM of a model on a folder of images",
        description=(
            "Add seeded Gaussian noise to every image of --images, denoise it with --model "
            "through the chosen backend (so the deployed artifact is what gets measured) and "
            "report per-image and mean PSNR/SSIM.\n\n" + PROTOCOL
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from ..models import model_arg

    p.add_argument("--model", type=model_arg, default=None,
                   help="model file (.safetensors, .onnx, .plan) or registry name (`n3deploy models`); default: the shipped model")
    p.add_argument("--images", type=Path, required=True, help="folder of clean test images")
    p.add_argument("--sigma", type=float, default=None, help="noise level, 0-255 scale (default: the model's sigma)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument(
        "--backend", default="auto", choices=["auto", *BACKENDS],
        help="inference backend (default: auto, from the file type)",
    )
    p.add_argument(
        "--precision", default=None, choices=list(PRECISIONS),
        help="fp32, or the reduced-precision plan in fp16/bf16 where the backend offers it, fp64 (torch); "
             "default: FP32, or the precision the graph/engine was built in",
    )
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (onnxruntime, openvino; default: physical cores)")
    p.add_argument("--device", default=None, help="device for the backend, e.g. cpu or cuda (default: backend's choice)")
    p.add_argument("--channels", type=int, default=None, choices=[1, 3], help="read images as 1 or 3 channels (default: the model's)")
    p.add_argument("--json", type=Path, default=None, help="also write the full report as JSON here")
    p.add_argument("--quiet", action="store_true", help="print only the mean")
    p.set_defaults(func=run)


def _model_channels(backend: Backend) -> int:
    return backend.input_shape_limits.channels


def run(args: argparse.Namespace) -> int:
    from ..backends import load_backend
    from ..errors import N3DeployError
    from ..evaluate import evaluate_images

    model = args.model
    if model is None:
        from ..assets import default_model_path

        model = default_model_path()
    if not model.exists():
        raise N3DeployError(f"{model}: no such model file")
    opts = {"threads": args.threads} if args.threads else {}
    backend = load_backend(model, args.backend, device=args.device, precision=args.precision, **opts)
    meta = backend.metadata
    sigma = args.sigma if args.sigma is not None else meta.get("sigma")
    if sigma is None:
        raise N3DeployError(f"{model.name} records no noise level (blind model?): pass --sigma")
    channels = args.channels or _model_channels(backend)
    report = evaluate_images(backend.run, args.images, float(sigma), seed=args.seed, channels=channels, progress=not args.quiet)
    report.info.update(model=str(model), backend=backend.name, precision=backend.precision, model_sigma=meta.get("sigma"))
    if args.sigma is not None and meta.get("sigma") not in (None, args.sigma):
        print(f"note: {model.name} was trained for sigma={meta['sigma']:g}, evaluating at sigma={args.sigma:g}")
    if not args.quiet:
        width = max(len(r.name) for r in report.images)
        print(f"{'image':<{width}}  {'PSNR':>7}  {'SSIM':>6}  {'noisy':>7}")
        for r in report.images:
            print(f"{r.name:<{width}}  {r.psnr:7.2f}  {r.ssim:6.4f}  {r.psnr_noisy:7.2f}")
    print(
        f"mean over {len(report.images)} images, sigma={report.sigma:g}, seed={report.seed}, "
        f"backend={report.info['backend']} ({report.info['precision']}): PSNR {report.mean_psnr:.2f} dB, SSIM {report.mean_ssim:.4f}"
    )
    if args.json:
        report.write_json(args.json)
        print(f"wrote {args.json}")
    return 0
