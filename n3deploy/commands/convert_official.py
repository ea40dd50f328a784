"""``n3deploy convert-official``: the authors' ``.t7`` checkpoint -> an n3deploy ``.safetensors``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-official",
        help="convert the authors' pretrained N3Net checkpoint (.t7) to .safetensors",
        description=(
            "Read an official visinf/n3net Gaussian-denoising checkpoint "
            "(results_gaussian_denoising/pretrained_sigmaNN/checkpoint/051_ckpt.t7) safely "
            "(torch.load weights_only=True), check every key, and write an n3deploy checkpoint.\n\n"
            "example: n3deploy convert-official 051_ckpt.t7 --sigma 25 -o n3net_sigma25.safetensors"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", type=Path, help="the official .t7 file")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .safetensors path")
    p.add_argument("--sigma", type=float, default=None, help="noise level (0-255 scale) the weights were trained for")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import save_checkpoint
    from ..official import load_official

    model = load_official(args.checkpoint)
    meta = {"provenance": f"official visinf/n3net checkpoint {args.checkpoint.name}"}
    if args.sigma is not None:
        meta["sigma"] = args.sigma
    save_checkpoint(model, args.output, **meta)
    print(f"wrote {args.output}")
    return 0
