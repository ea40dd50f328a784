"""The embedded inference API: ``Denoiser(model_path).denoise(image)``.

Takes numpy images as applications have them (``H x W`` or ``H x W x C``; uint8, uint16 or
float32 in [0, 1]; a list or an ``N x H x W (x C)`` array for a batch) and returns the same
shape and dtype. Any size: small images are mirror-padded, large ones denoised in blended
overlapping tiles (see :mod:`n3deploy.tiling`). Given an ``.onnx`` graph or a TensorRT plan
it needs neither PyTorch nor any other part of the training stack.

Threads: one ``Denoiser`` may be shared by several threads. ONNX Runtime and PyTorch
backends run concurrent calls in parallel (their ``run`` is thread-safe); TensorRT calls are
serialised by a lock held per ``Denoiser`` (one execution context). For parallel TensorRT
inference create one ``Denoiser`` per thread.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .config import N3NetConfig
from .errors import InvalidImageError
from .tiling import TilePlan, run_tiled_many

if TYPE_CHECKING:
    from .backends.base import Backend

__all__ = ["Denoiser", "DEFAULT_TILE", "DEFAULT_OVERLAP"]

DEFAULT_TILE = 512  # px; ONNX Runtime needs ~3 KB per pixel of tile for the paper preset (BENCHMARKS.md)
DEFAULT_OVERLAP = 64
MIN_SIZE = N3NetConfig().min_size  # N3Net needs two patches along each axis (patch + stride)
_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def _config(metadata: dict[str, Any]) -> dict[str, Any]:
    config = metadata.get("config", {})
    return json.loads(config) if isinstance(config, str) else dict(config or {})


def _config_channels(metadata: dict[str, Any]) -> int:
    return int(_config(metadata).get("in_channels", 1))


class Denoiser:
    """Denoise images with an N3Net checkpoint, ONNX graph or TensorRT plan.

    Args:
        model_path: ``.safetensors`` checkpoint, ``.onnx`` graph or ``.plan``/``.engine``; a
            model-registry name (``"tiny-blind"``, see :func:`n3deploy.list_models`);
            ``None`` uses the model shipped with n3deploy (:func:`n3deploy.default_model_path`);
            an ``http(s)://host:port`` server URL with ``backend="remote"``; or a loaded
            :class:`~n3deploy.backends.base.Backend`.
        backend: ``auto`` (from the file type: ``.onnx`` -> ONNX Runtime with the best provider
            that works, ``.plan`` -> TensorRT, ``.safetensors`` -> torch) or any name of
            :data:`n3deploy.backends.BACKENDS` (``torch``, ``onnxruntime``, ``openvino``, ``tensorrt``, ...).
        tile: tile side in px for large images (default 512, or the graph's fixed shape).
        overlap: px shared by neighbouring tiles, blended linearly (default 64).
        device: ``cpu``/``cuda`` (backend-specific; ``None`` chooses).
        precision: ``None`` keeps FP32 (or the precision a graph/engine was built in); ``fp16`` /
            ``bf16`` ask for the reduced-precision plan where the backend offers it (e.g.
            ``backend="openvino", precision="bf16"`` on CPUs with AVX512_BF16/AMX), ``fp64`` for torch.
        batch_tiles: at most this many same-size tiles (of one image or of a list of images; a
            grayscale model's RGB planes count one each) go to the backend as one ``N x C x h x w``
            batch. Needs a graph with a dynamic batch axis (``n3deploy export --batch dynamic``),
            a checkpoint or a server; a fixed-batch graph gets exactly its batch per call. Results
            equal ``batch_tiles=1`` up to float rounding; memory grows with the batch.
        backend_opts: passed to the backend (e.g. ``threads=2`` for onnxruntime / openvino).

    A model trained for one sigma warns once per ``Denoiser`` (:class:`~n3deploy.errors.NoiseLevelWarning`)
    when an image's estimated noise (:func:`n3deploy.estimate_noise`) is far from it
    (``|estimate - sigma| > max(5, 0.35 sigma)``) and names the blind model; blind models never warn.
    """

    def __init__(
        self,
        model_path: "str | os.PathLike | Backend | None" = None,
        backend: str = "auto",
        tile: int | None = None,
        overlap: int | None = None,
        device: str | None = None,
        precision: str | None = None,
        batch_tiles: int = 1,
        **backend_opts: Any,
    ) -> None:
        from .backends import load_backend

        if model_path is None:
            from .assets import default_model_path

            model_path = default_model_path()
        from .backends.base import Backend

        if isinstance(model_path, Backend):  # an already loaded backend (e.g. one a server wraps)
            self._backend = model_path
            self.model_path = model_path.model_path
        else:
            remote = isinstance(model_path, str) and model_path.lower().startswith(("http://", "https://"))
            if not remote:
                from .models import resolve_model

                model_path = resolve_model(model_path)  # a registry name ("tiny-blind") -> its file
            self.model_path = model_path if remote else Path(model_path)  # a server URL stays a string
            self._backend = load_backend(self.model_path, backend=backend, device=device, precision=precision, **backend_opts)
        self.metadata: dict[str, Any] = dict(getattr(self._backend, "metadata", {}) or {})
        limits = self._backend.input_shape_limits
        self.channels = int(limits.channels or _config_channels(self.metadata))
        self.sigma = self.metadata.get("sigma")
        self._noise_warned = self.sigma is None  # blind models: nothing to compare the estimate with
        self._lock = threading.Lock() if self.backend == "tensorrt" else None
        self.plan = self._tile_plan(tile, overlap)
        if int(batch_tiles) < 1:
            raise ValueError(f"batch_tiles must be >= 1, got {batch_tiles}")
        self.batch_tiles = int(batch_tiles)

    @property
    def backend(self) -> str:
        """The backend that runs (a name of :data:`n3deploy.backends.BACKENDS`)."""
        return self._backend.name

    @property
    def providers(self) -> list[str]:
        return list(getattr(self._backend, "providers", []) or [])

    def _tile_plan(self, tile: int | None, overlap: int | None) -> TilePlan:
        limits = self._backend.input_shape_limits
        fixed = None if limits.is_dynamic else (limits.height, limits.width)
        if fixed:
            if tile is not None and (tile, tile) != tuple(fixed):
                raise ValueError(f"this graph has a fixed input of {fixed[0]}x{fixed[1]}: tile must be left unset")
            ov = overlap if overlap is not None else min(DEFAULT_OVERLAP, min(fixed) // 4)
            return TilePlan(tile=tuple(fixed), overlap=ov, min_size=MIN_SIZE, fixed=True)
        side = tile if tile is not None else DEFAULT_TILE
        for bound in (limits.max_height, limits.max_width):
            if bound:
                side = min(side, bound)
        if side < 2 * MIN_SIZE:
            raise ValueError(f"tile must be at least {2 * MIN_SIZE} px, got {side}")
        ov = overlap if overlap is not None else min(DEFAULT_OVERLAP, side // 4)
        return TilePlan(
            tile=(side, side), overlap=ov, min_size=max(MIN_SIZE, limits.min_size),
            stride=int(_config(self.metadata).get("stride", 1)),
        )

    # ------------------------------------------------------------------ public
    def denoise(self, image: np.ndarray | Sequence[np.ndarray]) -> np.ndarray | list[np.ndarray]:
        """Denoise one image (``H x W`` / ``H x W x C``), a list, or an ``N x H x W (x C)`` batch.

        3-D arrays are one ``H x W x C`` image when the last axis has 1, 3 or 4 entries, else a
        batch ``N x H x W``. Returns the same shape and dtype. Raises
        :class:`~n3deploy.errors.InvalidImageError` (a ``ValueError``) on unusable input.
        """
        if isinstance(image, (list, tuple)):
            for im in image:
                if not isinstance(im, np.ndarray):
                    raise InvalidImageError(f"expected a numpy array or a list of them, got {type(im).__name__}")
            return self._denoise_many(list(image))
        if not isinstance(image, np.ndarray):
            raise InvalidImageError(f"expected a numpy array or a list of them, got {type(image).__name__}")
        if image.ndim == 4 or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
            return np.stack(self._denoise_many(list(image))) if len(image) else self._reject_empty(image)
        return self._denoise_many([image])[0]

    __call__ = denoise

    # ----------------------------------------------------------------- private
    @staticmethod
    def _reject_empty(image: np.ndarray):
        raise InvalidImageError(f"empty image of shape {image.shape}")

    def _denoise_many(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Each image -> its planes as a float32 ``B x C x H x W`` batch; all run together (same-size
        tiles batched, see :func:`~n3deploy.tiling.run_tiled_many`); each converted back."""
        prepared = [self._prepare(im) for im in images]
        outs = self._run([batch for batch, _ in prepared])
        return [self._finish(out, image, alpha) for out, (_, alpha), image in zip(outs, prepared, images)]

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, "np.ndarray | None"]:
        """Validate one ``H x W (x C)`` image: ``(float32 B x C x H x W batch, alpha plane or None)``."""
        if image.ndim not in (2, 3):
            raise InvalidImageError(f"expected H x W or H x W x C, got an array of shape {image.shape}")
        if image.size == 0:
            self._reject_empty(image)
        dtype = image.dtype
        if dtype in _SCALES:
            x = image.astype(np.float32) / _SCALES[dtype]
        elif dtype == np.float32:
            if not np.isfinite(image).all():
                raise InvalidImageError("image contains NaN or Inf values")
            if image.min() < 0.0 or image.max() > 1.0:
                raise InvalidImageError(
                    f"float32 images must lie in [0, 1], got values in [{image.min():.3g}, {image.max():.3g}]"
                )
            x = image
        else:
            raise InvalidImageError(f"unsupported dtype {dtype}: use uint8, uint16 or float32 in [0, 1]")
        if not self._noise_warned:
            self._check_noise_level(image)
        planes = x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)  # C x H x W
        n = planes.shape[0]
        if n not in (1, 3, 4):
            raise InvalidImageError(f"images need 1, 3 or 4 channels (gray, RGB, RGBA), got {n}")
        alpha = None
        if n == 4:
            planes, alpha = planes[:3], planes[3]
        if self.channels == 1:
            batch = planes[:, None]  # each channel denoised on its own: C x 1 x H x W
        elif planes.shape[0] == self.channels:
            batch = planes[None]
        else:
            raise InvalidImageError(
                f"this model denoises {self.channels}-channel images; got {planes.shape[0]} channel(s)"
            )
        return np.ascontiguousarray(batch, dtype=np.float32), alpha

    @staticmethod
    def _finish(out: np.ndarray, image: np.ndarray, alpha: "np.ndarray | None") -> np.ndarray:
        """The denoised ``B x C x H x W`` batch back in ``image``'s layout and dtype."""
        dtype = image.dtype
        out = out.reshape(-1, *out.shape[-2:])  # C x H x W
        if alpha is not None:
            out = np.concatenate([out, alpha[None]], axis=0)
        out = np.clip(out, 0.0, 1.0)
        result = out[0] if image.ndim == 2 else np.moveaxis(out, 0, -1)
        if dtype in _SCALES:
            return np.rint(result * _SCALES[dtype]).astype(dtype)
        return result.astype(np.float32, copy=False)

    def _check_noise_level(self, image: np.ndarray) -> None:
        """Warn (once per Denoiser) when ``image``'s estimated noise is far from the model's sigma."""
        from .noise import estimate_noise, is_far_from

        try:
            estimate = estimate_noise(image)
        except InvalidImageError:  # too small to estimate: nothing to say
            return
        if is_far_from(estimate, float(self.sigma)):
            import warnings

            from .errors import NoiseLevelWarning
            from .models import list_models

            self._noise_warned = True
            blind = next((m.name for m in list_models() if m.blind), None)
            hint = f"; for images of unknown or other noise levels use the blind model Denoiser({blind!r})" if blind else ""
            warnings.warn(
                NoiseLevelWarning(
                    f"this model was trained for sigma={float(self.sigma):g}, but the image's estimated noise is "
                    f"sigma~{estimate:.1f} (n3deploy.estimate_noise): it will over-smooth or leave noise{hint}"
                ),
                stacklevel=5,
            )

    def _run(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        # a dynamic batch axis takes up to batch_tiles tiles per call; a fixed one exactly its batch
        fixed = self._backend.input_shape_limits.batch
        size, multiple = (self.batch_tiles, 1) if fixed is None else (fixed, fixed)
        if self._lock is None:
            return run_tiled_many(self._backend.run, batches, self.plan, max_batch=size, multiple=multiple)
        with self._lock:
            return run_tiled_many(self._backend.run, batches, self.plan, max_batch=size, multiple=multiple)

    def __repr__(self) -> str:
        return f"Denoiser({str(self.model_path)!r}, backend={self.backend!r}, tile={self.plan.tile}, overlap={self.plan.overlap})"
