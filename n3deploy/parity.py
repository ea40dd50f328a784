"""Numerical parity between backends: PyTorch FP32 (reference), ONNX Runtime FP32/FP16, OpenVINO, TensorRT.

The same noisy images (the evaluation protocol of :mod:`n3deploy.evaluate`: image ``i`` gets
``sigma/255 * default_rng([seed, i]).standard_normal``, not clipped) go through every backend via
polygraphy: ``Comparator.run`` drives a list of runners, polygraphy's own ``OnnxrtRunner`` for the
ONNX graphs (so ``polygraphy run model.onnx --onnxrt`` runs the very same files), its ``TrtRunner``
for TensorRT plans (:func:`n3deploy.tensorrt.runner.polygraphy_trt_runner`), and
:func:`backend_runner`, a ``BaseRunner`` around any :class:`~n3deploy.backends.base.Backend`, for
PyTorch. Polygraphy's ``compare_accuracy`` only compares outputs with each other; the metrics
that need the clean image (PSNR, and so ΔPSNR) are computed here:

* max / mean absolute error against the PyTorch FP32 output,
* PSNR of each backend's (clipped) output against the clean image, ΔPSNR vs the reference,
* the number of NaN/Inf output values.

Pass criteria (:class:`Tolerances`): FP32 backends ``max abs <= 1e-4``; backends running the
reduced-precision plan (``fp16``, ``bf16``) ``|ΔPSNR| <= 0.02 dB`` (mean over images); no NaN/Inf
anywhere.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .backends.base import Backend, InputShapeLimits
from .errors import InvalidImageError
from .export.metadata import INPUT_NAME, OUTPUT_NAME
from .fileio import atomic_path
from .precision import REDUCED_PRECISIONS

__all__ = [
    "Tolerances",
    "BackendParity",
    "ParityReport",
    "backend_runner",
    "ParityCase",
    "RunnerSpec",
    "run_parity",
    "noisy_cases",
    "load_cases",
    "crop_cases",
    "onnxrt_runner",
]


@dataclass(frozen=True)
class Tolerances:
    """Pass criteria. ``fp32_max_abs`` for FP32 backends, ``fp16_delta_psnr`` (dB) for the
    reduced-precision ones (``fp16`` and ``bf16``)."""

    fp32_max_abs: float = 1e-4
    fp16_delta_psnr: float = 0.02
    allow_nonfinite: bool = False


@dataclass(frozen=True)
class ParityCase:
    """One test image: ``clean`` and ``noisy`` are ``C x H x W`` float32."""

    name: str
    clean: np.ndarray
    noisy: np.ndarray


@dataclass(frozen=True)
class RunnerSpec:
    """A ready polygraphy runner plus what the table needs to know about it."""

    runner: Any
    precision: str
    providers: list[str]
    input_shape_limits: Optional[InputShapeLimits] = None


@dataclass
class BackendParity:
    """Metrics of one backend over all images (per-image lists in image order)."""

    name: str
    precision: str
    providers: list[str]
    max_abs: list[float] = field(default_factory=list)
    mean_abs: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    delta_psnr: list[float] = field(default_factory=list)
    nonfinite: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def is_reduced(self) -> bool:
        """Runs the reduced-precision plan (``fp16``/``bf16``): judged by ΔPSNR, not max abs."""
        return self.precision in REDUCED_PRECISIONS

    def summary(self) -> dict[str, float]:
        return {
            "max_abs": max(self.max_abs, default=0.0),
            "mean_abs": float(np.mean(self.mean_abs)) if self.mean_abs else 0.0,
            "psnr": float(np.mean(self.psnr)) if self.psnr else float("nan"),
            "delta_psnr": float(np.mean(self.delta_psnr)) if self.delta_psnr else 0.0,
            "nonfinite": int(sum(self.nonfinite)),
            "seconds": float(np.mean(self.seconds)) if self.seconds else float("nan"),
        }

    def judge(self, tol: Tolerances, is_reference: bool = False) -> None:
        """Fill :attr:`failures` from the tolerances."""
        s = self.summary()
        self.failures = []
        if s["nonfinite"] and not tol.allow_nonfinite:
            self.failures.append(f"{s['nonfinite']} NaN/Inf output values")
        if is_reference or self.precision == "fp64":
            return  # a float64 run measures the reference's own float32 error: information, no bar
        if self.is_reduced:
            if not abs(s["delta_psnr"]) <= tol.fp16_delta_psnr:
                self.failures.append(f"|ΔPSNR| {abs(s['delta_psnr']):.4f} dB > {tol.fp16_delta_psnr} dB")
        elif not s["max_abs"] <= tol.fp32_max_abs:
            self.failures.append(f"max abs error {s['max_abs']:.3g} > {tol.fp32_max_abs:g}")


@dataclass
class ParityReport:
    """The parity table: the reference first, then every other backend."""

    sigma: float
    seed: int
    images: list[str]
    image_shapes: list[tuple[int, ...]]
    tolerances: Tolerances
    backends: list[BackendParity]

    @property
    def ok(self) -> bool:
        return all(not b.failures for b in self.backends)

    def format(self) -> str:
        head = f"{'backend':<22} {'precision':<11} {'max abs':>9} {'mean abs':>9} {'PSNR':>8} {'ΔPSNR':>8} {'NaN/Inf':>7} {'s/img':>7}  verdict"
        lines = [
            f"parity over {len(self.images)} images, sigma={self.sigma:g}, seed={self.seed} "
            f"(reference: {self.backends[0].name}; errors vs reference, PSNR vs clean)",
            head,
            "-" * len(head),
        ]
        for i, b in enumerate(self.backends):
            s = b.summary()
            verdict = "reference" if i == 0 and not b.failures else ("ok" if not b.failures else "FAIL: " + "; ".join(b.failures))
            lines.append(
                f"{b.name:<22} {b.precision:<11} {s['max_abs']:9.2e} {s['mean_abs']:9.2e} {s['psnr']:8.3f} "
                f"{s['delta_psnr']:+8.4f} {s['nonfinite']:7d} {s['seconds']:7.3f}  {verdict}"
            )
        lines.append(
            f"tolerances: FP32 max abs <= {self.tolerances.fp32_max_abs:g}, FP16/BF16 |ΔPSNR| <= "
            f"{self.tolerances.fp16_delta_psnr:g} dB, no NaN/Inf -> {'PASS' if self.ok else 'FAIL'}"
        )
        exact = next((b for b in self.backends if b.precision == "fp64"), None)
        if exact is not None:
            own = exact.summary()["max_abs"]
            lines.append(
                f"float32 conditioning: the float32 reference itself is {own:.2e} (max abs) from float64 on these "
                "images; FP32 backends within that distance agree with it as closely as float32 allows"
            )
        for b in self.backends:
            lines.append(f"  {b.name}: {', '.join(b.providers)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sigma": self.sigma,
            "seed": self.seed,
            "ok": self.ok,
            "images": self.images,
            "image_shapes": [list(s) for s in self.image_shapes],
            "tolerances": asdict(self.tolerances),
            "backends": [{**asdict(b), "summary": b.summary()} for b in self.backends],
        }

    def write_json(self, path: "str | os.PathLike") -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n")
        return path


@functools.lru_cache(maxsize=None)
def _backend_runner_class():
    """A polygraphy ``BaseRunner`` subclass around an n3deploy Backend (made on first use, so
    importing this module does not import polygraphy)."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata
    from polygraphy.datatype import DataType

    class BackendRunner(BaseRunner):
        def __init__(self, backend: Backend, name: Optional[str] = None) -> None:
            super().__init__(name=name or backend.name, prefix="n3deploy-runner")
            self.backend = backend

        def get_input_metadata_impl(self):
            channels = self.backend.input_shape_limits.channels
            meta = TensorMetadata()
            meta.add(INPUT_NAME, dtype=DataType.FLOAT32, shape=(None, channels, None, None))
            return meta

        def infer_impl(self, feed_dict):
            start = time.perf_counter()
            out = self.backend.run(np.ascontiguousarray(feed_dict[INPUT_NAME], dtype=np.float32))
            self.inference_time = time.perf_counter() - start
            return OrderedDict([(OUTPUT_NAME, out)])

    return BackendRunner


def backend_runner(backend: Backend, name: Optional[str] = None):
    """A polygraphy runner (``BaseRunner``) that runs an n3deploy :class:`Backend`."""
    return _backend_runner_class()(backend, name)


def noisy_cases(clean_images: Sequence[np.ndarray], names: Sequence[str], sigma: float, seed: int = 0) -> list[ParityCase]:
    """Noisy versions of ``clean_images`` (``C x H x W`` in [0, 1]) by the evaluation protocol."""
    from .evaluate import add_noise, image_rng

    return [
        ParityCase(name, np.asarray(clean, np.float32), add_noise(clean, sigma, image_rng(seed, i)))
        for i, (name, clean) in enumerate(zip(names, clean_images))
    ]


def crop_cases(cases: list[ParityCase], size: Optional[tuple[int, int]]) -> list[ParityCase]:
    """Center-crop every case to ``size`` (the fixed size of some graph), or fail if too small."""
    if size is None:
        return cases
    h, w = size
    fitted = []
    for c in cases:
        H, W = c.clean.shape[-2:]
        if H < h or W < w:
            raise InvalidImageError(f"{c.name} is {H}x{W}, smaller than the fixed-size graph's {h}x{w}")
        top, left = (H - h) // 2, (W - w) // 2
        crop = (Ellipsis, slice(top, top + h), slice(left, left + w))
        fitted.append(ParityCase(c.name, c.clean[crop], c.noisy[crop]))
    return fitted


def _fixed_size(items: Sequence[Any]) -> Optional[tuple[int, int]]:
    sizes = set()
    for item in items:
        limits: Optional[InputShapeLimits] = item.input_shape_limits
        if limits is not None and limits.height is not None and limits.width is not None:
            sizes.add((limits.height, limits.width))
    if len(sizes) > 1:
        raise InvalidImageError(f"the fixed-size graphs disagree on the image size: {sorted(sizes)}")
    return sizes.pop() if sizes else None


def _psnr(clean: np.ndarray, est: np.ndarray) -> float:
    from .evaluate import psnr

    if not np.isfinite(est).all():
        return float("nan")
    return psnr(clean, est)


def run_parity(
    reference: Backend,
    others: Sequence[tuple[str, Any]],
    cases: Sequence[ParityCase],
    *,
    sigma: float,
    seed: int = 0,
    tolerances: Tolerances = Tolerances(),
) -> ParityReport:
    """Run ``cases`` through the reference backend and ``others`` with polygraphy's Comparator.

    ``others``: ``(label, item)`` pairs; an item is a :class:`RunnerSpec` (a polygraphy runner such
    as ``OnnxrtRunner``, see :func:`onnxrt_runner`) or an n3deploy Backend, which is wrapped in
    :func:`backend_runner`. Labels must be unique. Images are center-cropped to the size of
    fixed-size graphs.
    """
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    labels = [reference.name] + [label for label, _ in others]
    if len(set(labels)) != len(labels):
        raise ValueError(f"backend labels must be unique, got {labels}")
    cases = crop_cases(list(cases), _fixed_size([reference] + [item for _, item in others]))
    runners = [backend_runner(reference, reference.name)]
    infos = [BackendParity(reference.name, reference.precision, reference.providers)]
    for label, item in others:
        if isinstance(item, Backend):
            runners.append(backend_runner(item, label))
            infos.append(BackendParity(label, item.precision, item.providers))
        else:
            item.runner.name = label
            runners.append(item.runner)
            infos.append(BackendParity(label, item.precision, list(item.providers)))
    feeds = [OrderedDict([(INPUT_NAME, c.noisy[None])]) for c in cases]
    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        results = Comparator.run(runners, data_loader=feeds)
    outputs = dict(results.items())

    ref_out = [next(iter(it.values())) for it in outputs[reference.name]]
    ref_psnr = [_psnr(case.clean, out[0]) for case, out in zip(cases, ref_out)]
    for info, runner in zip(infos, runners):
        iterations = outputs[runner.name]
        for i, (case, iteration) in enumerate(zip(cases, iterations)):
            out = np.asarray(next(iter(iteration.values())), dtype=np.float32)[0]
            ref = ref_out[i][0]
            diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
            finite = np.isfinite(out)
            info.max_abs.append(float(diff.max()) if finite.all() else float("inf"))
            info.mean_abs.append(float(diff[finite].mean()) if finite.any() else float("inf"))
            info.psnr.append(_psnr(case.clean, out))
            info.delta_psnr.append(info.psnr[-1] - ref_psnr[i])
            info.nonfinite.append(int(out.size - finite.sum()))
            info.seconds.append(float(iteration.runtime) if getattr(iteration, "runtime", None) else float("nan"))
    for i, info in enumerate(infos):
        info.judge(tolerances, is_reference=(i == 0))
    return ParityReport(
        sigma=float(sigma),
        seed=int(seed),
        images=[c.name for c in cases],
        image_shapes=[tuple(c.clean.shape) for c in cases],
        tolerances=tolerances,
        backends=infos,
    )


def onnxrt_runner(backend: Any) -> RunnerSpec:
    """Polygraphy's ``OnnxrtRunner`` over an :class:`OnnxRuntimeBackend`'s session (its providers,
    threads and optimisation level), described by the backend's precision, providers and limits."""
    from polygraphy.backend.onnxrt import OnnxrtRunner

    return RunnerSpec(OnnxrtRunner(backend.session), backend.precision, backend.providers, backend.input_shape_limits)


def load_cases(images: "str | os.PathLike", sigma: float, channels: int, seed: int = 0, limit: Optional[int] = None) -> list[ParityCase]:
    """The images of a folder (sorted by name, ``limit`` first ones) with protocol noise."""
    from .training.data import list_images, load_image

    paths = list_images(images)[: limit or None]
    return noisy_cases([load_image(p, channels) for p in paths], [p.name for p in paths], sigma, seed)

