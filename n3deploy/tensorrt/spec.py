"""One source of truth for an engine build: :class:`EngineBuildSpec`.

The same spec drives the TensorRT Python API build (:func:`n3deploy.tensorrt.builder.build_engine`)
and renders the equivalent ``trtexec`` command line (:meth:`EngineBuildSpec.to_trtexec_args`,
printed by ``n3deploy build-engine --print-trtexec`` and run by ``export/build_engine.sh``), so the
two cannot drift.

trtexec flags used, as documented in ``trtexec --help`` (TensorRT 10.x "Build Options") and the
TensorRT docs' "Command-Line Programs" page
(https://docs.nvidia.com/deeplearning/tensorrt/latest/reference/command-line-programs.html):

* ``--onnx=<file>``                       ONNX model
* ``--saveEngine=<file>``                 save the serialized engine
* ``--stronglyTyped``                     strongly typed network (TensorRT 10; on 11.x strong typing
  is always on and the flag is accepted as a no-op, see the 10.x->11.x trtexec migration page)
* ``--minShapes/--optShapes/--maxShapes=<input>:NxCxHxW``  one optimisation profile (dynamic inputs only)
* ``--timingCacheFile=<file>``            save/load the serialized global timing cache
* ``--memPoolSize=workspace:<MiB>``       workspace pool limit (no suffix = MiB; replaced ``--workspace``
  in TensorRT 10, see the 8.x->10.x trtexec migration page)
* ``--builderOptimizationLevel=<0..5>``   builder optimisation level
* ``--skipInference``                     exit after building, no benchmark

No precision flags (``--fp16``/``--best``/``--precisionConstraints``/``--layerPrecisions``): they
are removed in TensorRT 11 and meaningless for a strongly typed network, whose ONNX types decide
the precision.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import ModelFileError, N3DeployError
from .onnx_graph import OnnxGraphInfo, read_onnx_graph
from .shapes import ProfileShapes, Shape, ShapeError, format_shape, parse_shape

__all__ = [
    "DEFAULT_MIN_HW",
    "DEFAULT_OPT_HW",
    "DEFAULT_MAX_HW",
    "MAX_BUILDER_OPTIMIZATION_LEVEL",
    "EngineBuildSpec",
    "EngineSpecError",
    "resolve_spec",
]

# Default profile for dynamic height/width: 64x64 up to 4K UHD (2160x3840), tuned for 512x512.
DEFAULT_MIN_HW = (64, 64)
DEFAULT_OPT_HW = (512, 512)
DEFAULT_MAX_HW = (2160, 3840)
# trtexec --help: "Valid values include integers from 0 to the maximum optimization level, which is currently 5."
MAX_BUILDER_OPTIMIZATION_LEVEL = 5


class EngineSpecError(N3DeployError, ValueError):
    """Build options that cannot work (workspace <= 0, optimisation level out of range, weak typing)."""


def _trtexec_tensor_name(name: str) -> str:
    # trtexec --help: "Input names can be wrapped with escaped single quotes (ex: 'Input:0')" -
    # needed when the name itself contains the ':' or ',' separators of a shape spec.
    return f"'{name}'" if (":" in name or "," in name) else name


@dataclass(frozen=True)
class EngineBuildSpec:
    """Everything that decides a TensorRT engine build.

    Exactly one of ``profile`` (graph with dynamic input dimensions: one optimisation profile)
    and ``static_input_shape`` (fixed-shape graph: no profile, TensorRT needs none) is set.
    ``precision`` is read from the ONNX graph's own types and recorded, never requested: the
    network is strongly typed.
    """

    onnx_path: Path
    output_path: Path
    input_name: str
    profile: Optional[ProfileShapes]
    static_input_shape: Optional[Shape]
    precision: str
    timing_cache: Optional[Path] = None
    workspace_gib: Optional[float] = None
    builder_optimization_level: Optional[int] = None
    strongly_typed: bool = True

    def __post_init__(self) -> None:
        if (self.profile is None) == (self.static_input_shape is None):
            raise EngineSpecError("EngineBuildSpec needs exactly one of profile (dynamic graph) or static_input_shape (fixed graph)")
        if not self.strongly_typed:
            raise EngineSpecError(
                "n3deploy builds strongly typed networks only: TensorRT 11 removed weak typing, and the FP16 "
                "graph's own Casts decide which parts run in FP16 and FP32"
            )
        if self.workspace_gib is not None and not self.workspace_gib > 0:
            raise EngineSpecError(f"workspace must be a positive number of GiB, got {self.workspace_gib}")
        level = self.builder_optimization_level
        if level is not None and not 0 <= level <= MAX_BUILDER_OPTIMIZATION_LEVEL:
            raise EngineSpecError(f"builder optimization level must be 0..{MAX_BUILDER_OPTIMIZATION_LEVEL}, got {level}")

    # -- derived -------------------------------------------------------------------------------
    @property
    def is_dynamic(self) -> bool:
        return self.profile is not None

    @property
    def workspace_bytes(self) -> Optional[int]:
        return None if self.workspace_gib is None else int(self.workspace_gib * (1 << 30))

    @property
    def workspace_mib(self) -> Optional[int]:
        return None if self.workspace_gib is None else max(1, int(round(self.workspace_gib * 1024)))

    def replace(self, **changes: Any) -> "EngineBuildSpec":
        return dataclasses.replace(self, **changes)

    # -- renderings ----------------------------------------------------------------------------
    def to_trtexec_args(self, trtexec: str = "trtexec", *, skip_inference: bool = True) -> list[str]:
        """The ``trtexec`` argv (executable first) that builds the same engine as the Python API."""
        args = [trtexec, f"--onnx={self.onnx_path}", f"--saveEngine={self.output_path}"]
        if self.strongly_typed:
            args.append("--stronglyTyped")
        if self.profile is not None:
            name = _trtexec_tensor_name(self.input_name)
            args += [
                f"--minShapes={name}:{format_shape(self.profile.min)}",
                f"--optShapes={name}:{format_shape(self.profile.opt)}",
                f"--maxShapes={name}:{format_shape(self.profile.max)}",
            ]
        if self.timing_cache is not None:
            args.append(f"--timingCacheFile={self.timing_cache}")
        if self.workspace_mib is not None:
            args.append(f"--memPoolSize=workspace:{self.workspace_mib}")
        if self.builder_optimization_level is not None:
            args.append(f"--builderOptimizationLevel={self.builder_optimization_level}")
        if skip_inference:
            args.append("--skipInference")
        return args

    def to_trtexec_command(self, trtexec: str = "trtexec", *, skip_inference: bool = True) -> str:
        """:meth:`to_trtexec_args` as one shell-quoted line."""
        return shlex.join(self.to_trtexec_args(trtexec, skip_inference=skip_inference))

    def to_cli_args(self, profile: Optional[ProfileShapes] = None) -> list[str]:
        """The ``n3deploy build-engine`` argv that rebuilds this engine (optionally with another profile)."""
        profile = profile or self.profile
        args = ["n3deploy", "build-engine", str(self.onnx_path), "-o", str(self.output_path)]
        if profile is not None:
            args += ["--min-shape", format_shape(profile.min), "--opt-shape", format_shape(profile.opt),
                     "--max-shape", format_shape(profile.max)]
        if self.timing_cache is not None:
            args += ["--timing-cache", str(self.timing_cache)]
        if self.workspace_gib is not None:
            args += ["--workspace-gb", f"{self.workspace_gib:g}"]
        if self.builder_optimization_level is not None:
            args += ["--opt-level", str(self.builder_optimization_level)]
        return args

    def to_cli_command(self, profile: Optional[ProfileShapes] = None) -> str:
        return shlex.join(self.to_cli_args(profile))

    # -- (de)serialisation for engine metadata ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "onnx_path": str(self.onnx_path),
            "output_path": str(self.output_path),
            "input_name": self.input_name,
            "profile": None if self.profile is None else self.profile.to_dict(),
            "static_input_shape": None if self.static_input_shape is None else list(self.static_input_shape),
            "precision": self.precision,
            "timing_cache": None if self.timing_cache is None else str(self.timing_cache),
            "workspace_gib": self.workspace_gib,
            "builder_optimization_level": self.builder_optimization_level,
            "strongly_typed": self.strongly_typed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EngineBuildSpec":
        profile = data.get("profile")
        static = data.get("static_input_shape")
        return cls(
            onnx_path=Path(data["onnx_path"]),
            output_path=Path(data["output_path"]),
            input_name=str(data["input_name"]),
            profile=None if profile is None else ProfileShapes.from_dict(profile),
            static_input_shape=None if static is None else tuple(int(d) for d in static),
            precision=str(data["precision"]),
            timing_cache=None if data.get("timing_cache") is None else Path(data["timing_cache"]),
            workspace_gib=data.get("workspace_gib"),
            builder_optimization_level=data.get("builder_optimization_level"),
            strongly_typed=bool(data.get("strongly_typed", True)),
        )


def _as_shape(value: Optional[str | Sequence[int]], what: str) -> Optional[Shape]:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_shape(value, what=what)
    shape = tuple(int(d) for d in value)
    if not shape or any(d <= 0 for d in shape):
        raise ShapeError(f"{what}: every dimension must be >= 1, got {shape}")
    return shape


def _default_shape(graph_dims: tuple[Optional[int], ...], hw: tuple[int, int], path: Path) -> Shape:
    """A default NxCxHxW profile shape: the graph's fixed dimensions, batch 1, ``hw`` for dynamic H/W."""
    if len(graph_dims) != 4:
        raise ShapeError(
            f"{path}: input has {len(graph_dims)} dimensions; default profile shapes assume NxCxHxW, "
            "so give --min-shape, --opt-shape and --max-shape explicitly"
        )
    if graph_dims[1] is None:
        raise ShapeError(f"{path}: the channel dimension is dynamic; give --min/--opt/--max-shape explicitly")
    fallback = (1, None, hw[0], hw[1])
    return tuple(fixed if fixed is not None else fallback[axis] for axis, fixed in enumerate(graph_dims))  # type: ignore[misc]


def _fill_profile(given: dict[str, Optional[Shape]], graph_dims: tuple[Optional[int], ...], path: Path) -> ProfileShapes:
    """Complete a partly given profile; defaults bend to the given shapes (e.g. only --max-shape 1x1x256x256
    gives opt 256x256, not an impossible 512x512)."""
    lo, mid, hi = given["--min-shape"], given["--opt-shape"], given["--max-shape"]
    if lo is None:
        lo = _default_shape(graph_dims, DEFAULT_MIN_HW, path)
        for bound in (mid, hi):
            if bound is not None:
                lo = tuple(min(a, b) for a, b in zip(lo, bound))
    if hi is None:
        hi = _default_shape(graph_dims, DEFAULT_MAX_HW, path)
        for bound in (mid, lo):
            hi = tuple(max(a, b) for a, b in zip(hi, bound)) if bound is not None else hi
    if mid is None:
        mid = _default_shape(graph_dims, DEFAULT_OPT_HW, path)
        mid = tuple(min(max(m, a), b) for m, a, b in zip(mid, lo, hi))
    return ProfileShapes(lo, mid, hi)


def _check_against_graph(shape: Shape, graph_dims: tuple[Optional[int], ...], what: str, input_desc: str) -> None:
    if len(shape) != len(graph_dims):
        raise ShapeError(
            f"{what} {format_shape(shape)} has {len(shape)} dimensions but the graph input is {input_desc} "
            f"({len(graph_dims)} dimensions)"
        )
    for axis, (given, fixed) in enumerate(zip(shape, graph_dims)):
        if fixed is not None and given != fixed:
            raise ShapeError(
                f"{what} {format_shape(shape)}: axis {axis} is fixed to {fixed} in the graph (input {input_desc}); "
                f"only its dynamic ('?') dimensions can vary"
            )


def resolve_spec(
    onnx_path: str | os.PathLike,
    output_path: str | os.PathLike | None = None,
    *,
    min_shape: str | Sequence[int] | None = None,
    opt_shape: str | Sequence[int] | None = None,
    max_shape: str | Sequence[int] | None = None,
    timing_cache: str | os.PathLike | None = None,
    workspace_gib: float | None = None,
    builder_optimization_level: int | None = None,
    graph: OnnxGraphInfo | None = None,
) -> EngineBuildSpec:
    """Build an :class:`EngineBuildSpec` from an ONNX file and user options, checking them against the graph.

    * Dynamic input (some dimension is ``?``): one profile. Shapes not given default to
      ``1xCx64x64`` / ``1xCx512x512`` / ``1xCx2160x3840`` (C and any fixed dimension from the graph);
      given shapes must keep the graph's fixed dimensions and satisfy min <= opt <= max.
    * Fixed-shape input: no profile. Passing shapes is an error (the engine would silently accept
      only the graph's shape) unless they all equal that shape, which is accepted as redundant.
    * The graph's input and output must be float32 (FP16 graphs keep FP32 I/O).
    """
    onnx_path = Path(onnx_path)
    graph = graph or read_onnx_graph(onnx_path)
    inp = graph.input
    if len(graph.outputs) != 1:
        raise ModelFileError(f"{onnx_path}: expected exactly one graph output (the denoised image), found {len(graph.outputs)}")
    for tensor in (inp, graph.outputs[0]):
        if tensor.elem_type != "float32":
            raise ModelFileError(
                f"{onnx_path}: graph {'input' if tensor is inp else 'output'} {tensor.name!r} is {tensor.elem_type}; "
                "n3deploy engines take and return float32 (export FP16 graphs with FP32 I/O, e.g. keep_io_types=True)"
            )
    given = {
        "--min-shape": _as_shape(min_shape, "--min-shape"),
        "--opt-shape": _as_shape(opt_shape, "--opt-shape"),
        "--max-shape": _as_shape(max_shape, "--max-shape"),
    }
    profile: Optional[ProfileShapes] = None
    static: Optional[Shape] = None
    if inp.is_dynamic:
        for what, shape in given.items():
            if shape is not None:
                _check_against_graph(shape, inp.dims, what, inp.describe())
        profile = _fill_profile(given, inp.dims, onnx_path)
    else:
        static = tuple(int(d) for d in inp.dims)  # type: ignore[arg-type]
        differing = {what: s for what, s in given.items() if s is not None and s != static}
        if differing:
            flags = ", ".join(f"{what} {format_shape(s)}" for what, s in differing.items())
            raise ShapeError(
                f"{onnx_path} has a fixed input shape {format_shape(static)} ({inp.name}), so TensorRT builds it "
                f"without an optimisation profile and the engine accepts only that shape; got {flags}. "
                "Drop the shape options, or re-export the ONNX graph with dynamic height/width."
            )
    return EngineBuildSpec(
        onnx_path=onnx_path,
        output_path=Path(output_path) if output_path is not None else onnx_path.with_suffix(".plan"),
        input_name=inp.name,
        profile=profile,
        static_input_shape=static,
        precision=graph.precision,
        timing_cache=None if timing_cache is None else Path(timing_cache),
        workspace_gib=workspace_gib,
        builder_optimization_level=builder_optimization_level,
    )
