"""``n3deploy demo``: the end-to-end showcase, no arguments and no data needed."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="denoise a bundled photo with the shipped model on every available backend",
        description=(
            "Takes the model shipped with n3deploy and scikit-image's camera photo, adds noise at the "
            "model's sigma (fixed seed), exports ONNX FP32 and mixed FP16, denoises on every backend this "
            "machine can run (PyTorch, ONNX Runtime FP32/FP16, TensorRT FP16), and prints a parity/PSNR "
            "table with timings. Writes side_by_side.png (noisy | denoised | clean) and report.json.\n\n"
            "example: n3deploy demo -o demo_out"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-o", "--outdir", type=Path, default=Path("demo_out"), help="output folder (default demo_out/)")
    p.add_argument("--size", type=int, default=384, help="side of the square photo crop in px (default 384)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    report = run_demo(args.outdir, size=args.size, seed=args.seed)
    failed = [r for r in report.rows if r.status == "ok" and (r.nan_inf or 0) > 0]
    return 1 if failed or not any(r.status == "ok" for r in report.rows) else 0
