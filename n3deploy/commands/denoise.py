"""``n3deploy denoise``: denoise image files with any backend."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "denoise",
        help="denoise image files (PNG, JPEG, TIFF incl. 16-bit)",
        description=(
            "Denoise images with an N3Net checkpoint (.safetensors), ONNX graph (.onnx) or TensorRT plan "
            "(.plan). Outputs keep the input's size, channels and bit depth and are written atomically "
            "(a failure never leaves a half-written file). Folders are expanded to the images they hold.\n\n"
            "examples:\n"
            "  n3deploy denoise noisy.png -o out/                       # the shipped default model\n"
            "  n3deploy denoise photos/ -o out/ --model n3net.onnx --backend onnxruntime --tile 512"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", type=Path, help="image files or folders")
    p.add_argument("-o", "--outdir", type=Path, required=True, help="output folder (created if missing)")
    from ..models import model_arg

    p.add_argument("--model", type=model_arg, default=None,
                   help="model file or registry name (`n3deploy models`; default: the model shipped with n3deploy)")
    from ..backends import BACKENDS
    from ..precision import PRECISIONS

    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS], help="inference backend (default: from the file type)")
    p.add_argument("--precision", default=None, choices=list(PRECISIONS),
                   help="fp16/bf16: the reduced-precision plan where the backend offers it, e.g. --backend openvino "
                        "--precision bf16 on CPUs with AVX512_BF16 (default: FP32, or the graph's own)")
    p.add_argument("--tile", type=int, default=None, help="tile side in px for large images (default 512)")
    p.add_argument("--overlap", type=int, default=None, help="overlap between tiles in px (default 64)")
    p.add_argument("--suffix", default="", help="appended to output file names before the extension")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..denoiser import Denoiser
    from ..errors import InvalidImageError
    from ..imageio import IMAGE_SUFFIXES, read_image, write_image

    files: list[Path] = []
    for item in args.inputs:
        if item.is_dir():
            files += sorted(f for f in item.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise InvalidImageError(f"{item}: no such file or folder")
    if not files:
        raise InvalidImageError("no images found in the inputs")
    denoiser = Denoiser(args.model, backend=args.backend, tile=args.tile, overlap=args.overlap, precision=args.precision)
    args.outdir.mkdir(parents=True, exist_ok=True)
    for path in tqdm(files, desc=f"denoise [{denoiser.backend}]", unit="img"):
        out = denoiser.denoise(read_image(path))
        write_image(args.outdir / f"{path.stem}{args.suffix}{path.suffix}", out)
    print(f"wrote {len(files)} image(s) to {args.outdir} with {denoiser.backend}")
    return 0
