"""n3deploy: N3Net image denoising from PyTorch to ONNX Runtime and TensorRT.

Names that need PyTorch are imported lazily, so ``from n3deploy import Denoiser`` works on a
deployment machine without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "N3NetConfig": "n3deploy.config",
    "N3Net": "n3deploy.model",
    "save_checkpoint": "n3deploy.checkpoint",
    "load_checkpoint": "n3deploy.checkpoint",
    "load_official": "n3deploy.official",
    "export_onnx": "n3deploy.export.onnx_export",
    "Denoiser": "n3deploy.denoiser",
    "default_model_path": "n3deploy.assets",
    "shipped_model_path": "n3deploy.assets",
    "list_models": "n3deploy.models",
    "load_model": "n3deploy.models",
    "resolve_model": "n3deploy.models",
    "estimate_noise": "n3deploy.noise",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'n3deploy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
