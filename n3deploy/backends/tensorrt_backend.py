"""The inference API's ``tensorrt`` backend: a TensorRT plan (or an ONNX file built once via the engine cache).

Implements the Backend interface of :mod:`n3deploy.backends.base` (``name``, ``precision``,
``providers``, ``input_shape_limits``, ``metadata``, ``run_impl``; ``Backend.run`` validates first). Needs TensorRT >= 10, a CUDA GPU and
device buffers from PyTorch-with-CUDA or cuda-python; without them construction raises
:class:`~n3deploy.errors.BackendUnavailableError` naming what is missing. The engine's metadata
(TensorRT version, GPU, profile) is checked before the plan is deserialized, and every input is
validated (finite, non-empty float32 B×C×H×W inside the profile) before it reaches TensorRT.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..tensorrt.metadata import EngineMetadata
from .base import Backend, InputShapeLimits

__all__ = ["TensorRTBackend", "load_tensorrt_backend"]


class TensorRTBackend(Backend):
    """Runs a TensorRT plan; ``run`` maps float32 B×C×H×W to float32 B×C×H×W."""

    name = "tensorrt"

    def __init__(self, plan_path: str | os.PathLike, *, device: int = 0, allow_gpu_model_mismatch: bool = False) -> None:
        from ..tensorrt.runner import TensorRTEngine  # noqa: PLC0415 - imports tensorrt lazily

        self._engine = TensorRTEngine(plan_path, device=device, allow_gpu_model_mismatch=allow_gpu_model_mismatch)
        self.model_path = Path(plan_path)

    @classmethod
    def from_onnx(cls, onnx_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, device: int = 0,
                  **spec_overrides: Any) -> "TensorRTBackend":
        """Build (once, in ``cache_dir``) or reuse an engine for ``onnx_path``, then load it.

        ``cache_dir`` defaults to ``$N3DEPLOY_ENGINE_CACHE`` or ``~/.cache/n3deploy/engines``;
        ``spec_overrides`` are ``resolve_spec`` keywords (``min_shape``, ``max_shape``, ...).
        """
        from ..tensorrt.cache import EngineCache  # noqa: PLC0415
        from ..tensorrt.env import current_runtime_info  # noqa: PLC0415

        directory = Path(cache_dir or os.environ.get("N3DEPLOY_ENGINE_CACHE") or Path.home() / ".cache" / "n3deploy" / "engines")
        plan = EngineCache(directory).get_or_build(onnx_path, spec_overrides, runtime=current_runtime_info(device))
        return cls(plan, device=device)

    # -- Backend interface -------------------------------------------------------------------------
    @property
    def engine_metadata(self) -> EngineMetadata:
        return self._engine.metadata

    @property
    def precision(self) -> str:
        from ..precision import normalize_precision

        return normalize_precision(self.engine_metadata.precision)

    @property
    def providers(self) -> list[str]:
        meta = self.engine_metadata
        return [f"TensorRT {meta.tensorrt_version} ({meta.gpu_name}, buffers via {self._engine.buffer_source})"]

    @property
    def input_shape_limits(self) -> InputShapeLimits:
        """What the engine accepts: its profile's min/max (or its fixed shape); the full
        ``{"min", "opt", "max"}`` shapes are ``engine_metadata.input_shape_limits()``."""
        return self.engine_metadata.backend_limits()

    @property
    def metadata(self) -> dict[str, Any]:
        """The exporter's ONNX metadata (``sigma``, ``config``, ...) decoded, plus ``engine`` facts."""
        meta = self.engine_metadata
        from ..export.metadata import decode_props

        data = decode_props(meta.onnx_metadata)
        data["engine"] = {
            "plan": str(self.model_path),
            "tensorrt_version": meta.tensorrt_version,
            "gpu_name": meta.gpu_name,
            "compute_capability": meta.compute_capability,
            "precision": meta.precision,
            "onnx_sha256": meta.onnx_sha256,
            "profile": None if meta.profile is None else meta.profile.to_dict(),
        }
        return data

    def run_impl(self, x: np.ndarray) -> np.ndarray:
        """Denoise a validated float32 B×C×H×W batch inside the engine's profile."""
        return self._engine.infer(x)

    def __repr__(self) -> str:
        return f"TensorRTBackend({str(self.model_path)!r}, precision={self.precision!r})"


def load_tensorrt_backend(model_path: str | os.PathLike, **kwargs: Any) -> TensorRTBackend:
    """``.plan``/``.engine`` -> load it; ``.onnx`` -> build or reuse a cached engine, then load it."""
    path = Path(model_path)
    if path.suffix.lower() == ".onnx":
        return TensorRTBackend.from_onnx(path, **kwargs)
    return TensorRTBackend(path, **kwargs)

