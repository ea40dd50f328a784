"""The ``torch`` backend: an n3deploy ``.safetensors`` checkpoint (or an N3Net) run by PyTorch.

The reference every other backend is compared with (``n3deploy parity``). Runs in float32 under
``torch.inference_mode`` on ``device`` (``cpu`` by default, ``cuda[:N]`` when available). This is
the only backend module that imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import BackendUnavailableError
from .base import Backend, InputShapeLimits

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    """PyTorch float32 inference of an :class:`~n3deploy.model.N3Net`."""

    name = "torch"

    def __init__(self, model_path: "str | os.PathLike", device: Optional[str] = None, *, knn: str = "static") -> None:
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the torch backend needs PyTorch ({exc}); install n3deploy[torch], or export the model to ONNX "
                "and use the onnxruntime backend"
            ) from None
        from ..checkpoint import load_checkpoint

        model = load_checkpoint(model_path, knn=knn)
        self._setup(model, device)
        self.model_path = Path(model_path)

    @classmethod
    def from_model(cls, model: Any, device: Optional[str] = None) -> "TorchBackend":
        """Wrap an in-memory N3Net (its ``metadata`` attribute, if any, becomes the backend's)."""
        backend = cls.__new__(cls)
        backend.model_path = None
        backend._setup(model, device)
        return backend

    def _setup(self, model: Any, device: Optional[str]) -> None:
        import torch

        device = (device or "cpu").lower()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {device!r} requested but this PyTorch has no usable CUDA GPU")
        self._torch = torch
        self.device = torch.device(device)
        self.model = model.float().to(self.device).eval()
        self._metadata = dict(getattr(model, "metadata", {}) or {})
        self._metadata.setdefault("config", model.config.to_dict())
        self._metadata.setdefault("sigma", None)

    @property
    def precision(self) -> str:
        return "fp32"

    @property
    def providers(self) -> list[str]:
        return [f"torch {self._torch.__version__} ({self.device}, knn={self.model.knn})"]

    @property
    def input_shape_limits(self) -> InputShapeLimits:
        cfg = self.model.config
        return InputShapeLimits(channels=cfg.in_channels, min_size=cfg.min_size)

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def run(self, x: np.ndarray) -> np.ndarray:
        x = self.check_input(x)
        torch = self._torch
        with torch.inference_mode():
            out = self.model(torch.from_numpy(x).to(self.device))
        return out.float().cpu().numpy()
