"""The remote backend: a model behind a KServe v2 / Triton HTTP server, through ``tritonclient.http``.

``Denoiser("http://host:8000", backend="remote", model_name="n3net")`` talks to ``n3deploy serve``
or to a Triton Inference Server holding an ``n3deploy triton-repo`` repository with the same
client code. The backend reports the server's limits (model metadata: ``[-1, C, -1, -1]`` is a
dynamic graph; fixed dims a fixed one; the config's ``max_batch_size`` caps a batch) and the
n3deploy model config from the config's ``parameters`` (``n3deploy_config``), so the Denoiser
tiles locally on the model's patch grid and sends each tile batch as one binary request
(``B x C x h x w`` FP32 in, the raw ``denoised`` tensor back).

Server errors come back as exceptions: a 4xx as :class:`~n3deploy.errors.InvalidImageError` with
the server's message, anything else as :class:`~n3deploy.errors.BackendUnavailableError`.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Optional
from urllib.parse import urlparse

import numpy as np

from ..errors import BackendUnavailableError, InvalidImageError, ModelFileError
from .base import Backend, InputShapeLimits

__all__ = ["RemoteBackend", "is_remote_url"]

INPUT_NAME = "noisy"
OUTPUT_NAME = "denoised"


def is_remote_url(model: Any) -> bool:
    return isinstance(model, str) and model.lower().startswith(("http://", "https://"))


class RemoteBackend(Backend):
    """A served model (KServe v2 HTTP). ``url``: ``http[s]://host:port``; ``model_name``/``model_version``
    as the server names them; ``timeout``: seconds per request."""

    name = "remote"

    def __init__(
        self, url: str, device: Optional[str] = None, *, model_name: str = "n3net", model_version: str = "",
        timeout: float = 300.0, precision: str = "fp32",
    ) -> None:
        try:
            import tritonclient.http  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailableError(f"the remote backend needs tritonclient[http] ({exc}): pip install 'n3deploy[serve]'") from None
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ModelFileError(f"{url!r}: expected a server URL such as http://127.0.0.1:8000")
        self.url = url
        self.model_path = None
        self._host, self._ssl = parsed.netloc, parsed.scheme == "https"
        self.model_name, self.model_version, self.timeout = model_name, model_version, float(timeout)
        self._requested_precision = precision
        self._local = threading.local()
        self._limits, self._metadata = self._describe()

    # ------------------------------------------------------------------ connection
    def _client(self) -> Any:
        """One client per thread (each holds its own connection)."""
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.http as httpclient

            client = httpclient.InferenceServerClient(
                self._host, ssl=self._ssl, connection_timeout=self.timeout, network_timeout=self.timeout
            )
            self._local.client = client
        return client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            message = exc.message() or str(exc)
            if status.startswith("4") and status not in ("404",):
                raise InvalidImageError(f"{self.url} refused the request: {message}") from None
            raise BackendUnavailableError(f"{self.url}: {what} failed ({status or 'no status'}: {message})") from None
        except (OSError, ConnectionError) as exc:
            raise BackendUnavailableError(f"{self.url}: {what} failed, is the server running? ({exc})") from None

    def _describe(self) -> tuple[InputShapeLimits, Optional[int], dict[str, Any]]:
        client = self._client()
        if not self._call("the liveness check", client.is_server_live):
            raise BackendUnavailableError(f"{self.url} is not live")
        if not self._call("the readiness check", client.is_model_ready, self.model_name, self.model_version):
            raise BackendUnavailableError(f"{self.url}: model {self.model_name!r} is not ready")
        meta = self._call("reading the model metadata", client.get_model_metadata, self.model_name, self.model_version)
        try:
            config = self._call("reading the model config", client.get_model_config, self.model_name, self.model_version)
        except BackendUnavailableError:
            config = {}
        inputs = {t["name"]: t for t in meta.get("inputs", [])}
        outputs = {t["name"] for t in meta.get("outputs", [])}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise ModelFileError(
                f"{self.url}: model {self.model_name!r} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
                f"an n3deploy model has input {INPUT_NAME!r} and output {OUTPUT_NAME!r}"
            )
        spec = inputs[INPUT_NAME]
        shape = [int(d) for d in spec.get("shape", [])]
        if spec.get("datatype") != "FP32" or len(shape) != 4 or shape[1] < 1:
            raise ModelFileError(f"{self.url}: input {INPUT_NAME!r} is {spec.get('datatype')} {shape}; expected FP32 [B, C, H, W]")
        b, c, h, w = shape
        max_batch = int(config.get("max_batch_size") or 0) or None
        limits = InputShapeLimits(
            channels=c, batch=None if b == -1 else b, height=None if h == -1 else h, width=None if w == -1 else w,
            min_size=1 if h == -1 or w == -1 else min(h, w), max_batch=max_batch,
        )
        params = {k: (v.get("string_value") if isinstance(v, dict) else v) for k, v in (config.get("parameters") or {}).items()}
        metadata: dict[str, Any] = {"server": self.url, "model_name": self.model_name, "platform": meta.get("platform")}
        if params.get("n3deploy_config"):
            metadata["config"] = json.loads(str(params["n3deploy_config"]))
        else:
            metadata["config"] = {"in_channels": c}
        if params.get("n3deploy_sigma"):
            metadata["sigma"] = float(str(params["n3deploy_sigma"]))
        metadata["precision"] = params.get("n3deploy_precision") or self._requested_precision
        return limits, metadata

    # ------------------------------------------------------------------ Backend
    @property
    def precision(self) -> str:
        return str(self._metadata.get("precision", "fp32"))

    @property
    def providers(self) -> list[str]:
        return [f"{self.url}/v2/models/{self.model_name}"]

    @property
    def input_shape_limits(self) -> InputShapeLimits:
        return self._limits

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def run_impl(self, x: np.ndarray) -> np.ndarray:
        """One binary request (``Backend.run`` chunks a batch to the server's ``max_batch_size``)."""
        import tritonclient.http as httpclient

        inp = httpclient.InferInput(INPUT_NAME, list(x.shape), "FP32")
        inp.set_data_from_numpy(np.ascontiguousarray(x, dtype=np.float32), binary_data=True)
        out = httpclient.InferRequestedOutput(OUTPUT_NAME, binary_data=True)
        result = self._call(
            "inference", self._client().infer, self.model_name, [inp], model_version=self.model_version, outputs=[out]
        )
        y = result.as_numpy(OUTPUT_NAME)
        if y is None or y.shape != x.shape:
            raise BackendUnavailableError(
                f"{self.url}: the server answered {None if y is None else y.shape} for an input of shape {x.shape}"
            )
        return y.astype(np.float32, copy=False)
