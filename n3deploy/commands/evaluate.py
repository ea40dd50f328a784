"""``n3deploy eval``: PSNR/SSIM of a model (any backend) on a folder of clean images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PROTOCOL = """\
noise protocol (fixed, so numbers are comparable between models, backends and machines):
  images are read in sorted file-name order as float [0,1]; image i (0-based) gets its own
  generator numpy.random.default_rng([SEED, i]) and noise sigma/255 * standard_normal(shape)
  in float64, added without clipping; the model output is clipped to [0,1]; PSNR and SSIM
  are scikit-image's with data_range=1; the mean is over images.

examples:
  n3deploy eval --model runs/tiny25/best.safetensors --images data/set12 --sigma 25
  n3deploy eval --model n3net.onnx --backend onnxruntime --images data/set12 --sigma 25 --json set12.json
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
        "--backend", default="auto", choices=["auto", "torch", "onnxruntime", "tensorrt"],
        help="inference backend (default: auto, from the file type)",
    )
    p.add_argument("--device", default=None, help="device for the backend, e.g. cpu or cuda (default: backend's choice)")
    p.add_argument("--channels", type=int, default=None, choices=[1, 3], help="read images as 1 or 3 channels (default: the model's)")
    p.add_argument("--json", type=Path, default=None, help="also write the full report as JSON here")
    p.add_argument("--quiet", action="store_true", help="print only the mean")
    p.set_defaults(func=run)


class _TorchBackend:
    """Minimal torch backend for n3deploy checkpoints (used when :mod:`n3deploy.backends` is absent)."""

    name = "torch"

    def __init__(self, path: Path, device: str | None) -> None:
        import torch

        from ..checkpoint import load_checkpoint

        self._torch = torch
        self.device = torch.device(device or "cpu")
        self.model = load_checkpoint(path).to(self.device)
        self.metadata: dict[str, Any] = dict(getattr(self.model, "metadata", {}))
        self.channels = self.model.config.in_channels

    def run(self, x):
        torch = self._torch
        with torch.no_grad():
            return self.model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()


def open_backend(model: Path, backend: str = "auto", device: str | None = None):
    """A backend with ``.run(x: B x C x H x W float32) -> ndarray``, ``.name``, ``.metadata``.

    Uses :func:`n3deploy.backends.load_backend` when available; ``.safetensors`` checkpoints
    always work through the built-in torch path.
    """
    try:
        from ..backends import load_backend
    except ImportError:
        load_backend = None
    if load_backend is not None:
        return load_backend(model, backend=backend, device=device)
    if backend not in ("auto", "torch") or model.suffix != ".safetensors":
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError(
            f"backend {backend!r} for {model.name} needs n3deploy.backends, which is not installed here; "
            "use a .safetensors checkpoint with --backend torch"
        )
    return _TorchBackend(model, device)


def _model_channels(backend) -> int | None:
    limits = getattr(backend, "input_shape_limits", None)
    if isinstance(getattr(limits, "channels", None), int):
        return limits.channels
    for attr in ("channels", "in_channels"):
        if isinstance(getattr(backend, attr, None), int):
            return getattr(backend, attr)
    meta = getattr(backend, "metadata", {}) or {}
    cfg = meta.get("config")
    if isinstance(cfg, dict) and "in_channels" in cfg:
        return int(cfg["in_channels"])
    return None


def run(args: argparse.Namespace) -> int:
    from ..errors import N3DeployError
    from ..evaluate import evaluate_images

    model = args.model
    if model is None:
        from ..assets import default_model_path

        model = default_model_path()
    if not model.exists():
        raise N3DeployError(f"{model}: no such model file")
    backend = open_backend(model, args.backend, args.device)
    meta = dict(getattr(backend, "metadata", {}) or {})
    sigma = args.sigma if args.sigma is not None else meta.get("sigma")
    if sigma is None:
        raise N3DeployError(f"{model.name} records no noise level (blind model?): pass --sigma")
    channels = args.channels or _model_channels(backend) or 1
    report = evaluate_images(backend.run, args.images, float(sigma), seed=args.seed, channels=channels, progress=not args.quiet)
    report.info.update(model=str(model), backend=getattr(backend, "name", "?"), model_sigma=meta.get("sigma"))
    if args.sigma is not None and meta.get("sigma") not in (None, args.sigma):
        print(f"note: {model.name} was trained for sigma={meta['sigma']:g}, evaluating at sigma={args.sigma:g}")
    if not args.quiet:
        width = max(len(r.name) for r in report.images)
        print(f"{'image':<{width}}  {'PSNR':>7}  {'SSIM':>6}  {'noisy':>7}")
        for r in report.images:
            print(f"{r.name:<{width}}  {r.psnr:7.2f}  {r.ssim:6.4f}  {r.psnr_noisy:7.2f}")
    print(
        f"mean over {len(report.images)} images, sigma={report.sigma:g}, seed={report.seed}, "
        f"backend={report.info['backend']}: PSNR {report.mean_psnr:.2f} dB, SSIM {report.mean_ssim:.4f}"
    )
    if args.json:
        report.write_json(args.json)
        print(f"wrote {args.json}")
    return 0
