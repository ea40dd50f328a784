"""The interface every inference backend implements (PyTorch, ONNX Runtime, OpenVINO, TensorRT, ...).

A :class:`Backend` maps a float32 ``B x C x H x W`` numpy array in [0, 1] (noisy) to a float32
``B x C x H x W`` array (denoised) and describes itself: ``name``, ``precision``, the execution
``providers`` actually in use, the ``input_shape_limits`` it accepts and the model ``metadata``
(``config``, ``sigma``, ...). Plain numpy: importing this module needs neither torch nor onnx.

:meth:`Backend.run` is concrete: it validates the input (:meth:`Backend.check_input`: type, dtype,
emptiness, rank, channels, the shape limits, NaN/Inf) for every backend, then calls the
subclass's :meth:`Backend.run_impl`, which sees only valid C-contiguous float32 batches (as
Polygraphy's ``infer`` / ``infer_impl``) of at most the batch one engine call takes: a longer
batch is run in chunks of the graph's fixed batch or of its ``max_batch``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import InvalidImageError

__all__ = ["Backend", "InputShapeLimits"]


@dataclass(frozen=True)
class InputShapeLimits:
    """What ``Backend.run`` accepts. ``None`` means "any" (dynamic) for that dimension.

    ``batch``: fixed batch of the graph (inputs whose batch is a multiple are run in chunks) or
    ``None``; ``max_batch``: the largest batch one call of a dynamic-batch engine takes (a
    TensorRT profile's maximum, the batch a fixed-size graph was audited for, a server's
    ``max_batch_size``; longer inputs are run in chunks), ``None``: unbounded;
    ``height``/``width``: fixed size or ``None``; a dynamic size must lie in
    ``[min_size, max_height]`` x ``[min_size, max_width]`` (maxima ``None``: unbounded).
    """

    channels: int
    batch: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    min_size: int = 1
    max_height: Optional[int] = None
    max_width: Optional[int] = None
    max_batch: Optional[int] = None

    @property
    def chunk(self) -> Optional[int]:
        """Samples per engine call: the fixed batch, else ``max_batch`` (``None``: any)."""
        return self.batch or self.max_batch

    @property
    def is_dynamic(self) -> bool:
        return self.height is None or self.width is None

    def describe(self) -> str:
        b = str(self.batch) if self.batch is not None else f"B<={self.max_batch}" if self.max_batch else "B"
        if not self.is_dynamic:
            return f"{b}x{self.channels}x{self.height}x{self.width} (fixed)"
        hi = f"{self.max_height or 'inf'}x{self.max_width or 'inf'}"
        return f"{b}x{self.channels}xHxW with {self.min_size}x{self.min_size} <= HxW <= {hi}"

    def check(self, shape: tuple[int, ...]) -> None:
        """Raise :class:`InvalidImageError` (saying what to do) if ``shape`` is not accepted."""
        if len(shape) != 4:
            raise InvalidImageError(f"expected a B x C x H x W array, got shape {tuple(shape)}")
        b, c, h, w = shape
        if c != self.channels:
            raise InvalidImageError(f"the model takes {self.channels}-channel images, got {c} channels (shape {tuple(shape)})")
        if self.batch is not None and (b < 1 or b % self.batch):
            raise InvalidImageError(f"the graph's batch is fixed at {self.batch}; got batch {b}")
        if self.height is not None and (h, w) != (self.height, self.width):
            raise InvalidImageError(
                f"this graph was exported for {self.height}x{self.width} images, got {h}x{w}: export a dynamic "
                "graph (`n3deploy export` without --height/--width) or use the tiling Denoiser"
            )
        if min(h, w) < self.min_size:
            raise InvalidImageError(f"images must be at least {self.min_size}x{self.min_size} pixels, got {h}x{w}")
        if (self.max_height and h > self.max_height) or (self.max_width and w > self.max_width):
            raise InvalidImageError(
                f"{h}x{w} exceeds the graph's declared maximum {self.max_height}x{self.max_width}: "
                "tile the image or re-export with larger --max-height/--max-width"
            )


class Backend(abc.ABC):
    """A loaded model that denoises ``B x C x H x W`` float32 batches.

    Subclasses implement :meth:`run_impl` (called by :meth:`run` after validation) and the
    descriptive properties.
    """

    name: str = "backend"
    model_path: Optional[Path] = None

    @property
    @abc.abstractmethod
    def precision(self) -> str:
        """One of :data:`n3deploy.precision.PRECISIONS`: ``fp32``, ``fp16``/``bf16`` (the
        reduced-precision plan: convolutions reduced, the KNN part FP32) or ``fp64``."""

    @property
    def providers(self) -> list[str]:
        """The execution providers / devices actually in use."""
        return []

    @property
    @abc.abstractmethod
    def input_shape_limits(self) -> InputShapeLimits:
        """What :meth:`run` accepts."""

    @property
    def metadata(self) -> dict[str, Any]:
        """Model metadata: ``config`` (dict), ``sigma`` (float or None), ..."""
        return {}

    def run(self, x: np.ndarray) -> np.ndarray:
        """Denoise ``x`` (float32 ``B x C x H x W``, values in [0, 1]) -> float32 ``B x C x H x W``.

        Raises :class:`~n3deploy.errors.InvalidImageError` (saying what to do) for anything the
        model cannot take; see :meth:`check_input`.
        """
        x = self.check_input(x)
        step = self.input_shape_limits.chunk
        if step is None or x.shape[0] <= step:
            return self.run_impl(x)
        return np.concatenate([self.run_impl(x[i : i + step]) for i in range(0, x.shape[0], step)])

    @abc.abstractmethod
    def run_impl(self, x: np.ndarray) -> np.ndarray:
        """The engine call: ``x`` is a validated C-contiguous float32 ``B x C x H x W`` batch of
        at most ``input_shape_limits.chunk`` samples; returns float32 ``B x C x H x W``."""

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Validate ``x`` (type, dtype, shape limits, finiteness); returns it C-contiguous."""
        if not isinstance(x, np.ndarray):
            raise InvalidImageError(f"expected a numpy array, got {type(x).__name__}")
        if x.dtype != np.float32:
            raise InvalidImageError(f"expected float32 input, got {x.dtype} (convert with x.astype(np.float32))")
        if x.size == 0:
            raise InvalidImageError(f"empty input of shape {x.shape}")
        self.input_shape_limits.check(x.shape)
        if not np.isfinite(x).all():
            raise InvalidImageError("the input contains NaN or Inf values")
        return np.ascontiguousarray(x)

    def __repr__(self) -> str:
        where = f"{str(self.model_path)!r}, " if self.model_path else ""
        return f"{type(self).__name__}({where}precision={self.precision!r}, providers={self.providers})"
