"""Inference backends behind one interface (:class:`~n3deploy.backends.base.Backend`).

``load_backend(path)`` picks the backend from the file type: ``.safetensors`` -> ``torch``,
``.onnx`` -> ``onnxruntime``, ``.plan``/``.engine`` -> ``tensorrt``. Each backend module is imported
only when chosen, so the ONNX Runtime backend works on machines without PyTorch or TensorRT.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from ..errors import BackendUnavailableError, ModelFileError
from .base import Backend, InputShapeLimits

__all__ = ["Backend", "InputShapeLimits", "BACKENDS", "backend_for_path", "load_backend"]

BACKENDS = ("torch", "onnxruntime", "tensorrt")
_BY_SUFFIX = {".safetensors": "torch", ".onnx": "onnxruntime", ".plan": "tensorrt", ".engine": "tensorrt"}
# Which files each backend can open (TensorRT builds .onnx files into cached engines).
_ACCEPTS = {"torch": {".safetensors"}, "onnxruntime": {".onnx"}, "tensorrt": {".plan", ".engine", ".onnx"}}


def backend_for_path(model_path: "str | os.PathLike") -> str:
    """The default backend for a model file, from its suffix."""
    suffix = Path(model_path).suffix.lower()
    if suffix not in _BY_SUFFIX:
        raise ModelFileError(
            f"{model_path}: unknown model type {suffix!r}; expected .safetensors (PyTorch checkpoint), "
            ".onnx (exported graph) or .plan/.engine (TensorRT engine)"
        )
    return _BY_SUFFIX[suffix]


def _cuda_index(device: Optional[str]) -> int:
    if device and device.lower().startswith("cuda:"):
        return int(device.split(":", 1)[1])
    return 0


def load_backend(model_path: "str | os.PathLike", backend: str = "auto", device: Optional[str] = None, **opts: Any) -> Backend:
    """Open ``model_path`` with ``backend`` (``auto``, ``torch``, ``onnxruntime`` or ``tensorrt``).

    ``device``: ``cpu``/``cuda[:N]``/``auto`` (``tensorrt`` for ONNX Runtime's TensorRT provider);
    ``opts`` go to the backend's constructor (e.g. ``threads=`` for onnxruntime). Raises
    :class:`~n3deploy.errors.ModelFileError` for a missing or mismatched file and
    :class:`~n3deploy.errors.BackendUnavailableError` when the backend cannot run here.
    """
    path = Path(model_path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    name = backend_for_path(path) if backend == "auto" else backend
    if name not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    if path.suffix.lower() not in _ACCEPTS[name]:
        raise ModelFileError(
            f"{path}: the {name} backend opens {', '.join(sorted(_ACCEPTS[name]))} files, not {path.suffix or 'this'}"
        )
    if name == "torch":
        from .torch_backend import TorchBackend  # raises BackendUnavailableError itself without PyTorch

        return TorchBackend(path, device, **opts)
    if name == "onnxruntime":
        try:
            from .onnxruntime_backend import OnnxRuntimeBackend
        except ImportError as exc:
            raise BackendUnavailableError(f"the onnxruntime backend needs onnxruntime ({exc}): pip install onnxruntime") from None
        return OnnxRuntimeBackend(path, device, **opts)
    try:
        from .tensorrt_backend import load_tensorrt_backend
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the tensorrt backend is not available here ({exc}); it needs TensorRT >= 10 and a CUDA GPU "
            "(pip install 'n3deploy[gpu]', then `n3deploy doctor`)"
        ) from None
    try:
        return load_tensorrt_backend(path, device=_cuda_index(device), **opts)
    except ImportError as exc:  # tensorrt / cuda bindings missing at construction time
        raise BackendUnavailableError(
            f"the tensorrt backend cannot run here: {exc} (needs TensorRT >= 10 and a CUDA GPU; see `n3deploy doctor`)"
        ) from None
