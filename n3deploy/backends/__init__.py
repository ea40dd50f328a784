"""Inference backends behind one interface (:class:`~n3deploy.backends.base.Backend`), in one registry.

``load_backend(model)`` picks the backend from the registry (:mod:`.registry`): ``.safetensors`` ->
``torch``, ``.onnx`` -> ``onnxruntime`` (or ``openvino``, ``tensorrt`` on request),
``.plan``/``.engine`` -> ``tensorrt``. Each backend module is imported only when chosen, so the ONNX
Runtime and OpenVINO backends work on machines without PyTorch or TensorRT.
"""

from __future__ import annotations

from .base import Backend, InputShapeLimits
from .registry import (
    BACKENDS,
    BackendSpec,
    available_backends,
    backend_for_path,
    get_backend,
    is_url,
    load_backend,
    register_backend,
)

__all__ = [
    "Backend", "InputShapeLimits", "BACKENDS", "BackendSpec", "available_backends", "backend_for_path",
    "get_backend", "is_url", "load_backend", "register_backend",
]
