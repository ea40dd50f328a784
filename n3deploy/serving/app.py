"""The Ray Serve deployment behind ``n3deploy serve``: a FastAPI ingress speaking the KServe v2 /
Triton HTTP protocol plus ``POST /v1/denoise`` for image files.

Endpoints (``{name}`` is ``--name``, default ``n3net``):

* ``GET /v2``, ``GET /v2/health/live``, ``GET /v2/health/ready``
* ``GET /v2/models/{name}[/versions/1]``: metadata, input ``noisy`` FP32 ``[-1, C, -1, -1]``,
  output ``denoised`` (same shape)
* ``GET /v2/models/{name}[/versions/1]/ready`` and ``/config`` (Triton's model configuration as JSON,
  with the model's n3deploy config and sigma under ``parameters``)
* ``POST /v2/models/{name}[/versions/1]/infer``: JSON tensors or the binary tensor data extension;
  returns the model's raw output (large inputs in blended tiles), as Triton would
* ``POST /v1/denoise``: an image file body (PNG, JPEG, TIFF, BMP; 8/16-bit; grey/RGB/RGBA) -> the
  denoised image in the same format and bit depth

Each replica tiles requests like the :class:`~n3deploy.denoiser.Denoiser`; with ``max_batch > 1``
the tiles of concurrent requests meet in one ``@serve.batch`` queue, and same-size tiles run as one
``B x C x h x w`` backend call. Bad requests get a 4xx with ``{"error": "..."}``; nothing a client
sends produces a traceback.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at runtime.

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from .. import __version__
from ..errors import InvalidImageError, N3DeployError
from .images import decode_image, encode_image
from .model import SerialRunner, ServedModel, TileBackend, load_served_backend, run_tile_group
from .protocol import ProtocolError, datatype_name, encode_infer_response, parse_infer_request
from .settings import ServeSettings

__all__ = ["N3NetDeployment", "build_app", "INPUT_NAME", "OUTPUT_NAME", "MODEL_VERSION"]

INPUT_NAME = "noisy"
OUTPUT_NAME = "denoised"
MODEL_VERSION = "1"
_JSON_BYTES_PER_VALUE = 32  # generous bound of one float in a JSON body
logger = logging.getLogger("ray.serve")

api = FastAPI(title="n3deploy serve", version=__version__, docs_url=None, redoc_url=None)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@serve.deployment
@serve.ingress(api)
class N3NetDeployment:
    """One replica: the model, its tiling and its share of the batch queue."""

    def __init__(self, settings: ServeSettings) -> None:
        from ray.serve.metrics import Counter, Histogram

        from ..denoiser import Denoiser

        self.settings = settings
        self.inner = load_served_backend(settings.model, settings.backend, settings.precision, settings.replica_threads)
        self.channels = int(self.inner.input_shape_limits.channels)
        if settings.batching:
            self._tile_batch.set_max_batch_size(settings.max_batch)  # type: ignore[attr-defined]
            self._tile_batch.set_batch_wait_timeout_s(settings.batch_wait_ms / 1000.0)  # type: ignore[attr-defined]
            submit: Callable[[np.ndarray], np.ndarray] = self._submit_batched
        else:
            submit = SerialRunner(self.inner)
        self.tiles = TileBackend(self.inner, submit)
        self.denoiser = Denoiser(self.tiles, tile=settings.tile, overlap=settings.overlap)
        self.served = ServedModel(self.tiles, self.denoiser.plan)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Requests wait here for their tiles (threads, because tiling is synchronous code) ...
        self._requests = ThreadPoolExecutor(max_workers=max(16, 2 * settings.max_batch), thread_name_prefix="n3-request")
        # ... and batches run here, one at a time, each on the replica's inference threads.
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="n3-batch")
        self._m_batch = Histogram(
            "n3deploy_tile_batch_tiles", description="tiles per dynamic batch", boundaries=[1, 2, 4, 8, 16, 32, 64]
        )
        self._m_pixels = Counter("n3deploy_pixels", description="pixels denoised", tag_keys=("endpoint",))
        self._m_rejected = Counter("n3deploy_rejected_requests", description="requests answered with a 4xx", tag_keys=("endpoint",))

    # ------------------------------------------------------------------ batching
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _tile_batch(self, tiles: list[np.ndarray]) -> list[np.ndarray]:
        self._m_batch.observe(len(tiles))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._compute, run_tile_group, self.inner, tiles)

    def _submit_batched(self, tile: np.ndarray) -> np.ndarray:
        """Called from a request thread: queue ``tile`` and wait for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self._tile_batch(tile), self._loop).result()

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._loop = asyncio.get_running_loop()
        return await self._loop.run_in_executor(self._requests, fn, *args)

    async def _guard(self, endpoint: str, handler: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await handler()
        except ProtocolError as exc:
            self._m_rejected.inc(tags={"endpoint": endpoint})
            return _error(exc.status, str(exc))
        except (InvalidImageError, N3DeployError, ValueError) as exc:
            self._m_rejected.inc(tags={"endpoint": endpoint})
            return _error(400, str(exc))
        except Exception as exc:  # a server-side failure: logged here, one line to the client
            logger.exception("n3deploy serve: %s failed", endpoint)
            return _error(500, f"internal error ({type(exc).__name__}: {exc})")

    def _check_model(self, name: str, version: str | None = None) -> None:
        if name != self.settings.name:
            raise ProtocolError(f"unknown model {name!r}; this server serves {self.settings.name!r}", 404)
        if version not in (None, "", MODEL_VERSION):
            raise ProtocolError(f"model {name!r} has no version {version!r}; available: {MODEL_VERSION}", 404)

    async def _body(self, request: Request, limit: int) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ProtocolError(f"the request body is {int(length)} bytes, above this server's limit of {limit}", 413)
        body = await request.body()
        if len(body) > limit:
            raise ProtocolError(f"the request body is {len(body)} bytes, above this server's limit of {limit}", 413)
        return body

    # ------------------------------------------------------------------ health and metadata
    @api.get("/v2")
    async def server_metadata(self) -> Response:
        return JSONResponse({"name": "n3deploy", "version": __version__, "extensions": ["binary_tensor_data"]})

    @api.get("/v2/health/live")
    async def live(self) -> Response:
        return Response(status_code=200)

    @api.get("/v2/health/ready")
    async def ready(self) -> Response:
        return Response(status_code=200)

    def _tensor_meta(self, name: str) -> dict[str, Any]:
        return {"name": name, "datatype": "FP32", "shape": [-1, self.channels, -1, -1]}

    @api.get("/v2/models/{name}")
    @api.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(self, name: str, version: str | None = None) -> Response:
        async def handle() -> Response:
            self._check_model(name, version)
            return JSONResponse({
                "name": name, "versions": [MODEL_VERSION], "platform": f"n3deploy_{self.inner.name}",
                "inputs": [self._tensor_meta(INPUT_NAME)], "outputs": [self._tensor_meta(OUTPUT_NAME)],
            })
        return await self._guard("metadata", handle)

    @api.get("/v2/models/{name}/ready")
    @api.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(self, name: str, version: str | None = None) -> Response:
        async def handle() -> Response:
            self._check_model(name, version)
            return Response(status_code=200)
        return await self._guard("ready", handle)

    @api.get("/v2/models/{name}/config")
    @api.get("/v2/models/{name}/versions/{version}/config")
    async def model_config(self, name: str, version: str | None = None) -> Response:
        async def handle() -> Response:
            self._check_model(name, version)
            meta = self.inner.metadata
            config = meta.get("config", {})
            params = {"n3deploy_config": {"string_value": config if isinstance(config, str) else json.dumps(config)}}
            if meta.get("sigma") is not None:
                params["n3deploy_sigma"] = {"string_value": str(meta["sigma"])}
            dims = [-1, self.channels, -1, -1]
            s = self.settings
            return JSONResponse({
                "name": name, "platform": f"n3deploy_{self.inner.name}", "max_batch_size": 0,
                "input": [{"name": INPUT_NAME, "data_type": "TYPE_FP32", "dims": dims}],
                "output": [{"name": OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": dims}],
                "instance_group": [{"count": s.replicas, "kind": "KIND_CPU"}],
                "dynamic_batching": {"max_queue_delay_microseconds": int(s.batch_wait_ms * 1000)} if s.batching else None,
                "parameters": params,
            })
        return await self._guard("config", handle)

    # ------------------------------------------------------------------ inference
    @api.post("/v2/models/{name}/infer")
    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(self, name: str, request: Request, version: str | None = None) -> Response:
        async def handle() -> Response:
            self._check_model(name, version)
            limit = self.settings.max_pixels * self.channels * _JSON_BYTES_PER_VALUE + (1 << 20)
            body = await self._body(request, limit)
            req = parse_infer_request(
                body, request.headers.get("inference-header-content-length"), request.headers.get("content-encoding")
            )
            if set(req.inputs) != {INPUT_NAME}:
                raise ProtocolError(f"model {name!r} takes one input {INPUT_NAME!r}, got {sorted(req.inputs)}")
            x = req.inputs[INPUT_NAME]
            if x.dtype != np.float32:
                raise ProtocolError(f"input {INPUT_NAME!r} must be FP32, got {datatype_name(x.dtype)}")
            if x.ndim == 4 and x.shape[0] * x.shape[2] * x.shape[3] > self.settings.max_pixels:
                n, _, h, w = x.shape
                raise ProtocolError(
                    f"the request holds {n} image(s) of {w}x{h} = {n * h * w} pixels, above this server's limit of "
                    f"{self.settings.max_pixels} (--max-pixels)", 413,
                )
            y = await self._in_thread(self.served.run, x)
            self._m_pixels.inc(int(x.shape[0] * x.shape[2] * x.shape[3]), tags={"endpoint": "infer"})
            content, headers = encode_infer_response(name, MODEL_VERSION, req, {OUTPUT_NAME: y})
            return Response(content=content, headers=headers)
        return await self._guard("infer", handle)

    @api.post("/v1/denoise")
    async def denoise(self, request: Request) -> Response:
        async def handle() -> Response:
            body = await self._body(request, self.settings.max_pixels * 8 + (1 << 20))
            image = decode_image(body, self.settings.max_pixels)
            out = await self._in_thread(self.denoiser.denoise, image.pixels)
            self._m_pixels.inc(int(image.pixels.shape[0] * image.pixels.shape[1]), tags={"endpoint": "denoise"})
            return Response(content=encode_image(out, image.format), media_type=image.media_type)
        return await self._guard("denoise", handle)


def build_app(settings: ServeSettings) -> Any:
    """The bound Ray Serve application for ``settings`` (pass it to ``serve.run``)."""
    threads = settings.replica_threads
    return N3NetDeployment.options(  # type: ignore[attr-defined]
        num_replicas=settings.replicas,
        max_ongoing_requests=max(16, 2 * settings.max_batch),
        ray_actor_options={"num_cpus": threads},
        graceful_shutdown_timeout_s=15.0,
        health_check_period_s=2.0,
    ).bind(settings)

