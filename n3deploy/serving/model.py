"""The served model inside one replica: a loaded backend, the tiling Denoiser and tile batching.

Plain Python (no Ray): the Ray Serve deployment (:mod:`n3deploy.serving.app`) supplies the
function that submits one tile to its ``@serve.batch`` queue; everything else lives here.

* :class:`TileBackend` wraps the loaded backend (same limits and metadata); its ``run_impl`` hands
  each ``B x C x h x w`` tile to ``submit`` (the batch queue, or the backend directly when
  batching is off).
* :func:`run_tile_group` is what one batch runs: the queued tiles grouped by shape, each group
  concatenated into one ``sum(B) x C x h x w`` array and run through the backend once.
* :class:`ServedModel` is what ``/v2/models/{name}/infer`` calls: it accepts any
  ``N x C x H x W`` float32 array with the model's channel count (validated by
  :meth:`Backend.run`) and returns the model's raw output (not clipped, as Triton would),
  large inputs cut into the Denoiser's blended tiles.
* ``/v1/denoise`` uses a :class:`~n3deploy.denoiser.Denoiser` over the :class:`TileBackend`.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import numpy as np

from ..backends.base import Backend, InputShapeLimits
from ..tiling import TilePlan, run_tiled

__all__ = ["TileBackend", "ServedModel", "run_tile_group", "load_served_backend"]

SubmitFn = Callable[[np.ndarray], np.ndarray]


def run_tile_group(backend: Backend, tiles: list[np.ndarray]) -> list[np.ndarray]:
    """Run ``tiles`` (each ``B_i x C x h_i x w_i``) with as few backend calls as shapes: tiles of one
    shape are concatenated along the batch axis, run once, and split back in order."""
    results: list[Optional[np.ndarray]] = [None] * len(tiles)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, tile in enumerate(tiles):
        groups.setdefault(tuple(tile.shape[1:]), []).append(i)
    for indices in groups.values():
        batch = np.concatenate([tiles[i] for i in indices]) if len(indices) > 1 else tiles[indices[0]]
        out = backend.run(batch)
        start = 0
        for i in indices:
            n = tiles[i].shape[0]
            results[i] = out[start : start + n]
            start += n
    return [r for r in results if r is not None]


class TileBackend(Backend):
    """The loaded backend seen through ``submit`` (one tile at a time, batched by the caller)."""

    def __init__(self, inner: Backend, submit: SubmitFn) -> None:
        self.inner = inner
        self.submit = submit
        self.name = inner.name
        self.model_path = inner.model_path

    @property
    def precision(self) -> str:
        return self.inner.precision

    @property
    def providers(self) -> list[str]:
        return self.inner.providers

    @property
    def input_shape_limits(self) -> InputShapeLimits:
        return self.inner.input_shape_limits

    @property
    def metadata(self) -> dict[str, Any]:
        return self.inner.metadata

    def run_impl(self, x: np.ndarray) -> np.ndarray:
        return self.submit(x)


class ServedModel(Backend):
    """Any ``N x C x H x W`` float32 request -> the model's raw ``N x C x H x W`` output, tiled with ``plan``."""

    name = "served"

    def __init__(self, tiles: TileBackend, plan: TilePlan) -> None:
        self.tiles = tiles
        self.plan = plan
        self.model_path = tiles.model_path

    @property
    def precision(self) -> str:
        return self.tiles.precision

    @property
    def input_shape_limits(self) -> InputShapeLimits:
        return InputShapeLimits(channels=self.tiles.input_shape_limits.channels)

    @property
    def metadata(self) -> dict[str, Any]:
        return self.tiles.metadata

    def run_impl(self, x: np.ndarray) -> np.ndarray:
        return run_tiled(self.tiles.run, x, self.plan)


def load_served_backend(model: Optional[str], backend: str, precision: Optional[str], threads: int) -> Backend:
    """Open ``model`` (``None``: the shipped default) with ``threads`` inference threads.

    ``precision`` ``None``: the model's own (FP32, or the precision a graph was exported in)."""
    from ..backends import load_backend
    from ..backends.registry import backend_for_path

    if model is None:
        from ..assets import default_model_path

        model = str(default_model_path())
    try:
        from ..models import resolve_model

        model = str(resolve_model(model))
    except ImportError:
        pass
    name = backend_for_path(model) if backend == "auto" else backend
    opts: dict[str, Any] = {}
    if name in ("onnxruntime", "openvino"):
        opts["threads"] = threads
    elif name == "torch":  # PyTorch has one intra-op pool per process (the replica's)
        import torch

        torch.set_num_threads(threads)
    return load_backend(model, name, precision=precision, **opts)


class SerialRunner:
    """Direct submission when batching is off: one backend call at a time per replica (each call
    already uses the replica's threads)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.backend.run(x)
