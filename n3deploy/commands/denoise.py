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
            "A rerun skips inputs whose output is newer than the input (--overwrite to redo them), so a killed "
            "job resumes where it stopped. A file that cannot be read is reported and skipped; the command exits "
            "non-zero if any input failed. Every file gets a record (input, output, status, error, seconds) in "
            "the JSON-lines report (--report, default OUT/denoise_report.jsonl).\n\n"
            "--engine ray runs the same job on a Ray Data actor pool: without --address on a local cluster "
            "sized to this machine, with --address auto or ray://host:10001 on an existing one (`ray start "
            "--head`, KubeRay). Size it so workers x threads-per-worker <= cores.\n\n"
            "examples:\n"
            "  n3deploy denoise noisy.png -o out/                       # the shipped default model\n"
            "  n3deploy denoise photos/ -o out/ --model n3net.onnx --backend onnxruntime --tile 512\n"
            "  n3deploy denoise photos/ -o out/ --model n3net.onnx --engine ray --workers 4 --threads-per-worker 2\n"
            "  n3deploy denoise /shared/scans -o /shared/clean --model n3net.onnx --engine ray --address auto"
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
    p.add_argument("--overwrite", action="store_true", help="redo inputs whose output is already newer than the input")
    p.add_argument("--report", type=Path, default=None,
                   help="JSON-lines record of every file (default: OUTDIR/denoise_report.jsonl)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: in this process (default); ray: a Ray Data actor pool (pip install 'n3deploy[ray]')")
    p.add_argument("--address", default=None,
                   help="--engine ray: join this cluster (`auto`, `ray://host:10001`); default: start a local one")
    p.add_argument("--workers", type=int, default=None,
                   help="--engine ray: actors, each with its own model (default: cluster CPUs / threads per worker)")
    p.add_argument("--threads-per-worker", type=int, default=None,
                   help="CPU threads of each model (default: ray: cluster CPUs / workers; local: the backend's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the summary line is still printed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..batch import DenoiseJob, DenoiseSettings, run_job
    from ..batch.job import Engine

    settings = DenoiseSettings(
        model=None if args.model is None else str(args.model), backend=args.backend, precision=args.precision,
        tile=args.tile, overlap=args.overlap, threads=args.threads_per_worker if args.engine == "local" else None,
    )
    job = DenoiseJob(tuple(args.inputs), args.outdir, settings, suffix=args.suffix, overwrite=args.overwrite,
                     report=args.report, progress=not args.no_progress)
    engine: Engine
    if args.engine == "ray":
        from ..batch.ray_engine import RayEngine

        engine = RayEngine(address=args.address, workers=args.workers, threads_per_worker=args.threads_per_worker)
    else:
        from ..batch import LocalEngine

        if args.address is not None or args.workers is not None:
            print("note: --address and --workers apply to --engine ray; running in this process")
        engine = LocalEngine()
    summary = run_job(job, engine)
    for rec in summary.records:
        if rec.status == "failed":
            print(f"failed: {rec.input}: {rec.error}")
    print(summary.line(engine.name))
    if summary.interrupted:
        return 130
    return 1 if summary.failed else 0
