"""Input shapes for TensorRT optimisation profiles: parse ``1x1x64x64``, validate min <= opt <= max.

Pure Python (no TensorRT), so every rule here is unit-tested on CPU machines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

from ..errors import N3DeployError

if TYPE_CHECKING:
    import tensorrt

__all__ = ["Shape", "ShapeError", "ProfileShapes", "parse_shape", "format_shape", "dims_tuple"]


def dims_tuple(dims: "tensorrt.Dims") -> tuple[int, ...]:
    """A TensorRT ``Dims`` (indexable, with a length: TensorRT's own tuple-like) as a tuple of ints."""
    return tuple(int(dims[i]) for i in range(len(dims)))

Shape = tuple[int, ...]


class ShapeError(N3DeployError, ValueError):
    """A shape string or profile that is malformed or inconsistent (message says how to fix it)."""


def parse_shape(text: str, *, what: str = "shape") -> Shape:
    """Parse ``"1x1x64x64"`` (trtexec's spelling) into ``(1, 1, 64, 64)``.

    Accepts ``x`` or ``X`` as separator and surrounding whitespace; every dimension must be a
    positive integer (``-1``/``?`` wildcards belong to the ONNX graph, not to a profile).
    """
    if not isinstance(text, str) or not text.strip():
        raise ShapeError(f"{what}: empty shape; write it as NxCxHxW, e.g. 1x1x512x512")
    parts = text.strip().lower().split("x")
    dims: list[int] = []
    for part in parts:
        part = part.strip()
        if not part.isdigit():
            raise ShapeError(
                f"{what}: {text!r} is not a shape: {part!r} is not a positive integer "
                "(write it as NxCxHxW, e.g. 1x1x512x512)"
            )
        value = int(part)
        if value <= 0:
            raise ShapeError(f"{what}: {text!r} has a zero dimension; every dimension must be >= 1")
        dims.append(value)
    return tuple(dims)


def format_shape(shape: Iterable[int]) -> str:
    """``(1, 1, 64, 64)`` -> ``"1x1x64x64"`` (the spelling trtexec and ``--min-shape`` use)."""
    return "x".join(str(int(d)) for d in shape)


@dataclass(frozen=True)
class ProfileShapes:
    """One TensorRT optimisation profile for the single image input: min, opt and max shapes.

    TensorRT tunes kernels for ``opt`` and accepts any input with ``min <= shape <= max``
    element-wise (IOptimizationProfile docs); inputs outside it fail at run time.
    """

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        ranks = {len(self.min), len(self.opt), len(self.max)}
        if len(ranks) != 1:
            raise ShapeError(
                "min/opt/max shapes must have the same number of dimensions, got "
                f"{format_shape(self.min)}, {format_shape(self.opt)}, {format_shape(self.max)}"
            )
        for axis, (lo, mid, hi) in enumerate(zip(self.min, self.opt, self.max)):
            if not lo <= mid <= hi:
                raise ShapeError(
                    f"profile must satisfy min <= opt <= max in every dimension; axis {axis} has "
                    f"min={lo}, opt={mid}, max={hi} "
                    f"(min {format_shape(self.min)}, opt {format_shape(self.opt)}, max {format_shape(self.max)})"
                )

    @property
    def rank(self) -> int:
        return len(self.opt)

    def contains(self, shape: Sequence[int]) -> bool:
        """Whether an input of ``shape`` is accepted by this profile."""
        return len(shape) == self.rank and all(lo <= int(d) <= hi for lo, d, hi in zip(self.min, shape, self.max))

    def widened_to(self, shape: Sequence[int]) -> "ProfileShapes":
        """The smallest profile containing this one and ``shape`` (used in 'rebuild with' advice)."""
        lo = tuple(min(a, int(b)) for a, b in zip(self.min, shape))
        hi = tuple(max(a, int(b)) for a, b in zip(self.max, shape))
        return ProfileShapes(lo, self.opt, hi)

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, data: dict) -> "ProfileShapes":
        try:
            return cls(tuple(int(d) for d in data["min"]), tuple(int(d) for d in data["opt"]),
                       tuple(int(d) for d in data["max"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ShapeError(f"malformed profile {data!r}: needs integer lists 'min', 'opt', 'max'") from exc

    def describe(self) -> str:
        return f"min {format_shape(self.min)}, opt {format_shape(self.opt)}, max {format_shape(self.max)}"
