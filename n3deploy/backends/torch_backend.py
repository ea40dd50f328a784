"""The ``torch`` backend: an n3deploy ``.safetensors`` checkpoint (or an N3Net) run by PyTorch.

The reference every other backend is compared with (``n3deploy parity``). Runs under
``torch.inference_mode`` on ``device`` (``cpu`` by default, ``cuda[:N]`` when available): in float32,
in float64 (``precision="fp64"``: how far float32 itself is from exact), or, with
``precision="fp16"``/``"bf16"``, under the reduced-precision plan of the FP16 ONNX graph
(:mod:`n3deploy.precision`: FP16/BF16 convolutions after batch-norm folding, FP32 KNN chain; FP32
input and output). FP16 is the way to see real GPU FP16 numerics and speed where TensorRT is not
installed; BF16 is the fast PyTorch path on CPUs with AVX512_BF16 or AMX. This is the only backend
module that imports torch.
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
    """PyTorch inference of an :class:`~n3deploy.model.N3Net` (FP32, the FP16 or BF16 plan, or FP64)."""

    name = "torch"

    def __init__(
        self,
        model_path: "str | os.PathLike",
        device: Optional[str] = None,
        *,
        knn: str = "static",
        precision: str = "fp32",
        threads: Optional[int] = None,
    ) -> None:
        """``threads``: PyTorch's CPU threads (``torch.set_num_threads``: process-wide, as in PyTorch)."""
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the torch backend needs PyTorch ({exc}); install n3deploy[torch], or export the model to ONNX "
                "and use the onnxruntime backend"
            ) from None
        from ..checkpoint import load_checkpoint

        if threads:
            torch.set_num_threads(int(threads))
        model = load_checkpoint(model_path, knn=knn)
        self._setup(model, device, precision)
        self.model_path = Path(model_path)

    @classmethod
    def from_model(cls, model: Any, device: Optional[str] = None, *, precision: str = "fp32") -> "TorchBackend":
        """Wrap an in-memory N3Net (its ``metadata`` attribute, if any, becomes the backend's)."""
        backend = cls.__new__(cls)
        backend.model_path = None
        backend._setup(model, device, precision)
        return backend

    def _setup(self, model: Any, device: Optional[str], precision: str = "fp32") -> None:
        import torch

        from ..precision import PRECISIONS, check_precision, reduced_precision

        precision = check_precision(precision, PRECISIONS, "torch backend")

        device = (device or "cpu").lower()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {device!r} requested but this PyTorch has no usable CUDA GPU")
        self._torch = torch
        self.device = torch.device(device)
        self.model = model.float().to(self.device).eval()
        if precision in ("fp16", "bf16"):
            self.model = reduced_precision(self.model, torch.float16 if precision == "fp16" else torch.bfloat16)
        elif precision == "fp64":
            self.model = self.model.double()
        self._precision = precision
        self._metadata = dict(getattr(model, "metadata", {}) or {})
        self._metadata.setdefault("config", model.config.to_dict())
        self._metadata.setdefault("sigma", None)

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def providers(self) -> list[str]:
        plan = f", {self._precision.upper()} plan: FP32 KNN" if self._precision in ("fp16", "bf16") else ""
        return [f"torch {self._torch.__version__} ({self.device}, knn={self.model.knn}{plan})"]

    @property
    def input_shape_limits(self) -> InputShapeLimits:
        cfg = self.model.config
        return InputShapeLimits(channels=cfg.in_channels, min_size=cfg.min_size)

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def run_impl(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            xt = torch.from_numpy(x).to(self.device)
            out = self.model(xt.double() if self._precision == "fp64" else xt)
        return out.float().cpu().numpy()
