"""``n3deploy serve``: serve a model over HTTP on Ray Serve (KServe v2 / Triton protocol + images)."""

from __future__ import annotations

import argparse
import sys

from ..serving.settings import DEFAULT_MAX_PIXELS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP on Ray Serve (KServe v2 / Triton protocol, image endpoint)",
        description=(
            "Serve a model on Ray Serve. Endpoints: the KServe v2 / Triton HTTP inference protocol "
            "(/v2/health/live, /v2/health/ready, /v2/models/NAME[/ready|/config], POST /v2/models/NAME/infer "
            "with JSON or binary tensors; tritonclient.http works unchanged) and POST /v1/denoise with an "
            "image file as the body (the denoised image comes back in the same format and bit depth). "
            "Concurrent requests' same-size tiles are batched (--max-batch, --batch-wait-ms). Bad requests "
            "get a 4xx with {\"error\": \"...\"}. SIGINT/SIGTERM stops it after in-flight requests finish. "
            "See docs/serving.md.\n\n"
            "examples:\n"
            "  n3deploy serve                                   # the shipped default model on 127.0.0.1:8000\n"
            "  n3deploy serve --model m.onnx --port 8080 --replicas 2 --max-batch 16\n"
            "  curl --data-binary @noisy.png http://127.0.0.1:8000/v1/denoise -o denoised.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=None, help="model file or registry name (default: the shipped default model)")
    p.add_argument("--backend", default="auto", help="inference backend in each replica (default: auto, from the model file)")
    p.add_argument(
        "--precision", default=None, choices=["fp32", "fp16", "bf16", "fp64"],
        help="precision (default: the model's own: FP32, or the precision a graph was exported in)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas, each with cores/replicas threads (default 1)")
    p.add_argument("--threads", type=int, default=None, help="inference threads per replica (default: cores // replicas)")
    p.add_argument("--max-batch", type=int, default=8, help="most tiles per dynamic batch; 1 turns batching off (default 8)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill, ms (default 5)")
    p.add_argument("--name", default="n3net", help="model name in the URLs (default n3net)")
    p.add_argument("--address", default=None, help="deploy onto an existing Ray cluster (e.g. ray://head:10001 or auto)")
    p.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
        help=f"largest request in pixels (images x H x W); larger ones get 413 (default {DEFAULT_MAX_PIXELS}, 8K)",
    )
    p.add_argument("--tile", type=int, default=None, help="tile side in px for large requests (default: the Denoiser's)")
    p.add_argument("--overlap", type=int, default=None, help="overlap between tiles in px (default: the Denoiser's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import BackendUnavailableError
    from ..serving.settings import ServeSettings

    try:
        from ..serving.runner import serve_until_signalled
    except ImportError as exc:
        raise BackendUnavailableError(f"n3deploy serve needs Ray Serve ({exc}): pip install 'n3deploy[serve]'") from None
    try:
        settings = ServeSettings(
            model=args.model, backend=args.backend, precision=args.precision, host=args.host, port=args.port,
            replicas=args.replicas, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, name=args.name,
            address=args.address, max_pixels=args.max_pixels, threads=args.threads, tile=args.tile, overlap=args.overlap,
        )
    except ValueError as exc:
        print(f"n3deploy serve: error: {exc}", file=sys.stderr)
        return 2
    if args.model is not None and not args.model.lower().startswith(("http://", "https://")):
        from pathlib import Path

        from ..errors import ModelFileError

        known = Path(args.model).exists()
        if not known:
            try:
                from ..models import resolve_model

                known = resolve_model(args.model).exists()
            except ImportError:
                pass
        if not known:
            raise ModelFileError(f"{args.model}: no such model file")
    return serve_until_signalled(settings)
