"""Engine metadata written next to every plan (``model.plan`` -> ``model.plan.json``).

A TensorRT plan only loads with the TensorRT version it was built with (unless built
version-compatible) and holds kernels for one GPU architecture; it accepts only inputs inside its
optimisation profile (TensorRT docs: "Engine Compatibility", "IOptimizationProfile"). The metadata
records those facts so n3deploy can refuse a mismatch *before* deserializing, with a message that
says what to rebuild and how. All of it is plain data, checked on CPU in the tests.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from .. import __version__ as N3DEPLOY_VERSION
from ..errors import EngineMismatchError, ModelFileError
from ..fileio import atomic_path
from .env import RuntimeInfo
from .shapes import ProfileShapes, Shape, format_shape
from .spec import EngineBuildSpec

__all__ = [
    "METADATA_SCHEMA",
    "EngineMetadata",
    "metadata_path",
    "write_metadata",
    "read_metadata",
    "check_compatible",
    "check_input_shape",
    "same_tensorrt_release",
]

METADATA_SCHEMA = 1


def metadata_path(plan_path: str | os.PathLike) -> Path:
    """``model.plan`` -> ``model.plan.json``."""
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + ".json")


@dataclass(frozen=True)
class EngineMetadata:
    """Facts about one serialized TensorRT engine (see module docstring)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    input_name: str
    output_names: tuple[str, ...]
    profile: Optional[ProfileShapes]
    static_input_shape: Optional[Shape]
    onnx_file: str
    onnx_sha256: str
    build: dict[str, Any]  # EngineBuildSpec.to_dict() of the build
    n3deploy_version: str = N3DEPLOY_VERSION
    built_with: str = "tensorrt-python"  # or "trtexec"
    created_utc: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    onnx_metadata: dict[str, str] = field(default_factory=dict)
    schema: int = METADATA_SCHEMA

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def for_build(
        cls,
        spec: EngineBuildSpec,
        runtime: RuntimeInfo,
        *,
        onnx_sha256: str,
        output_names: Sequence[str],
        onnx_metadata: Optional[dict[str, str]] = None,
        built_with: str = "tensorrt-python",
    ) -> "EngineMetadata":
        return cls(
            tensorrt_version=runtime.tensorrt_version,
            gpu_name=runtime.gpu_name,
            compute_capability=runtime.compute_capability,
            precision=spec.precision,
            input_name=spec.input_name,
            output_names=tuple(output_names),
            profile=spec.profile,
            static_input_shape=spec.static_input_shape,
            onnx_file=str(spec.onnx_path),
            onnx_sha256=onnx_sha256,
            build=spec.to_dict(),
            built_with=built_with,
            onnx_metadata=dict(onnx_metadata or {}),
        )

    # -- derived ---------------------------------------------------------------------------------
    @property
    def spec(self) -> EngineBuildSpec:
        """The build spec this engine was made from (for 'rebuild with' advice)."""
        return EngineBuildSpec.from_dict(self.build)

    def rebuild_command(self, profile: Optional[ProfileShapes] = None) -> str:
        """``n3deploy build-engine ...`` that rebuilds this engine (optionally with another profile)."""
        try:
            return self.spec.to_cli_command(profile)
        except (KeyError, TypeError, ValueError):
            return shlex.join(["n3deploy", "build-engine", self.onnx_file, "-o", "<plan>"])

    def input_shape_limits(self) -> dict[str, Shape]:
        """``{"min": ..., "opt": ..., "max": ...}``; for a fixed-shape engine all three are that shape."""
        if self.profile is not None:
            return {"min": self.profile.min, "opt": self.profile.opt, "max": self.profile.max}
        assert self.static_input_shape is not None
        return {"min": self.static_input_shape, "opt": self.static_input_shape, "max": self.static_input_shape}

    def backend_limits(self):
        """The engine's accepted inputs as the :class:`~n3deploy.backends.base.InputShapeLimits`
        every backend reports (what the Denoiser tiles and pads to)."""
        from ..backends.base import InputShapeLimits

        shapes = self.input_shape_limits()
        lo, hi = shapes["min"], shapes["max"]
        batch = lo[0] if lo[0] == hi[0] else None
        max_batch = None if batch is not None else hi[0]  # a batching profile: at most hi[0] per call
        if self.profile is None:
            return InputShapeLimits(
                channels=lo[1], batch=batch, height=lo[2], width=lo[3], min_size=min(lo[2:]), max_batch=max_batch
            )
        return InputShapeLimits(
            channels=lo[1], batch=batch, min_size=max(lo[2:]), max_height=hi[2], max_width=hi[3], max_batch=max_batch
        )

    # -- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["output_names"] = list(self.output_names)
        data["profile"] = None if self.profile is None else self.profile.to_dict()
        data["static_input_shape"] = None if self.static_input_shape is None else list(self.static_input_shape)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EngineMetadata":
        if not isinstance(data, dict):
            raise ValueError("engine metadata must be a JSON object")
        schema = int(data.get("schema", 0))
        if schema != METADATA_SCHEMA:
            raise ValueError(f"engine metadata schema {schema} is not the supported {METADATA_SCHEMA}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["output_names"] = tuple(values.get("output_names", ()))
        profile = values.get("profile")
        values["profile"] = None if profile is None else ProfileShapes.from_dict(profile)
        static = values.get("static_input_shape")
        values["static_input_shape"] = None if static is None else tuple(int(d) for d in static)
        values["onnx_metadata"] = {str(k): str(v) for k, v in (values.get("onnx_metadata") or {}).items()}
        return cls(**values)


def write_metadata(meta: EngineMetadata, plan_path: str | os.PathLike) -> Path:
    """Write ``<plan>.json`` atomically; returns its path."""
    path = metadata_path(plan_path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_metadata(plan_path: str | os.PathLike) -> EngineMetadata:
    """Read ``<plan>.json``; raises :class:`ModelFileError` (what is wrong, how to fix) if absent or malformed."""
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise ModelFileError(f"TensorRT plan not found: {plan_path}")
    path = metadata_path(plan_path)
    fix = (
        f"rebuild the engine with `n3deploy build-engine MODEL_fp16.onnx -o {plan_path}`, or, for a plan built "
        f"by trtexec, record its metadata with `n3deploy build-engine MODEL_fp16.onnx -o {plan_path} --metadata-only`"
    )
    if not path.is_file():
        raise ModelFileError(f"{plan_path} has no engine metadata ({path.name} is missing): {fix}")
    try:
        return EngineMetadata.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelFileError(f"{path} is not valid n3deploy engine metadata ({exc}): {fix}") from exc


def same_tensorrt_release(a: str, b: str) -> bool:
    """Whether two TensorRT versions are the same release (major.minor.patch; build numbers ignored).

    Plans are compatible only with the TensorRT version that built them unless built
    version-compatible (TensorRT docs, "Version Compatibility"); n3deploy does not build those.
    """
    return str(a).split(".")[:3] == str(b).split(".")[:3]


def check_compatible(meta: EngineMetadata, runtime: RuntimeInfo, *, allow_gpu_model_mismatch: bool = False) -> None:
    """Raise :class:`EngineMismatchError` if the plan was built for another TensorRT or GPU.

    * TensorRT release differs -> error (plans are tied to the TensorRT version).
    * Compute capability differs -> error (kernels are compiled for one architecture).
    * GPU model differs at the same compute capability -> error by default (NVIDIA: engines are
      specific to the GPU model they were built on; TensorRT itself only warns, it "is likely to
      affect performance or even cause errors"), a warning with ``allow_gpu_model_mismatch``.
    """
    problems: list[str] = []
    if not same_tensorrt_release(meta.tensorrt_version, runtime.tensorrt_version):
        problems.append(f"it was built with TensorRT {meta.tensorrt_version}, this machine has TensorRT {runtime.tensorrt_version}")
    if meta.compute_capability != runtime.compute_capability:
        problems.append(
            f"it was built for compute capability {meta.compute_capability} ({meta.gpu_name}), this GPU is "
            f"{runtime.gpu_name} with compute capability {runtime.compute_capability}"
        )
    elif meta.gpu_name != runtime.gpu_name:
        message = f"it was built on a {meta.gpu_name}, this GPU is a {runtime.gpu_name} (same compute capability {runtime.compute_capability})"
        if allow_gpu_model_mismatch:
            warnings.warn(f"TensorRT engine: {message}; it may run slower than an engine built here", RuntimeWarning, stacklevel=2)
        else:
            problems.append(message + "; pass allow_gpu_model_mismatch=True to try it anyway")
    if problems:
        raise EngineMismatchError(
            f"TensorRT engine {meta.build.get('output_path', '')} cannot be used here: " + "; ".join(problems)
            + f". Rebuild it on this machine with: {meta.rebuild_command()}"
        )


def check_input_shape(meta: EngineMetadata, shape: Sequence[int]) -> None:
    """Raise :class:`EngineMismatchError` if an input of ``shape`` is outside the engine's profile."""
    shape = tuple(int(d) for d in shape)
    if meta.profile is None:
        assert meta.static_input_shape is not None
        if shape != meta.static_input_shape:
            raise EngineMismatchError(
                f"input {format_shape(shape)} does not match the engine's fixed input shape "
                f"{format_shape(meta.static_input_shape)} (its ONNX graph has a fixed shape). Resize or tile "
                "the image to that shape, or export a graph with dynamic height/width and rebuild the engine "
                "with a profile (n3deploy build-engine --min-shape/--opt-shape/--max-shape)."
            )
        return
    if meta.profile.contains(shape):
        return
    if len(shape) != meta.profile.rank:
        raise EngineMismatchError(
            f"input has shape {format_shape(shape)} ({len(shape)} dimensions); the engine expects "
            f"{meta.profile.rank} dimensions ({meta.profile.describe()})"
        )
    if meta.profile.rank == 4 and meta.profile.min[1] == meta.profile.max[1] and shape[1] != meta.profile.min[1]:
        raise EngineMismatchError(
            f"input {format_shape(shape)} has {shape[1]} channels; the engine takes {meta.profile.min[1]} "
            "(N x C x H x W). Convert the image (e.g. to grayscale) or use a model trained for that many channels."
        )
    wider = meta.profile.widened_to(shape)
    raise EngineMismatchError(
        f"input {format_shape(shape)} is outside the engine's optimisation profile ({meta.profile.describe()}). "
        f"Tile the image into pieces inside the profile, or rebuild the engine with a wider profile: "
        f"{meta.rebuild_command(wider)}"
    )
