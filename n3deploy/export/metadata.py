"""What an exported n3deploy ONNX graph records about itself, in the model's ``metadata_props``.

Every value is stored as JSON text (``"sigma": "25.0"``, ``"config": "{...}"``), so any reader can
decode the whole map with ``json.loads`` per value (the TensorRT backend does exactly that). Keys:

==================  ==========================================================================
``format``          ``"n3deploy-onnx-v1"``
``config``          the :class:`~n3deploy.config.N3NetConfig` as a JSON object
``sigma``           noise level (0-255 scale) the weights were trained for, or ``null`` (blind)
``n3deploy_version`` the exporting n3deploy version
``input_spec``      :class:`InputSpec`: input name, batch, channels, fixed or dynamic H/W, limits
``precision``       ``"fp32"`` or ``"fp16"`` (FP16 graph, FP32 islands and I/O; ``"mixed-fp16"``
                    in graphs of earlier versions, read as ``"fp16"``)
``fp32_scopes``     the module scopes the reduced-precision plan keeps in FP32 (the KNN chain)
``opset``           the ONNX opset of the default domain
``source``          provenance of the weights (the checkpoint's own metadata, when known)
==================  ==========================================================================

Plain ``onnx`` only: deployment machines read this without PyTorch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import onnx

from ..errors import ModelFileError
from ..precision import normalize_precision

__all__ = ["ONNX_FORMAT", "INPUT_NAME", "OUTPUT_NAME", "InputSpec", "ExportMetadata", "decode_props", "read_metadata", "write_metadata"]

ONNX_FORMAT = "n3deploy-onnx-v1"
INPUT_NAME = "noisy"  # float32 B x C x H x W, values in [0, 1]
OUTPUT_NAME = "denoised"  # float32 B x C x H x W


@dataclass(frozen=True)
class InputSpec:
    """The graph's single input ``name``: ``batch x channels x height x width`` float32.

    ``height``/``width`` are ints for a fixed-size graph and ``None`` for symbolic dimensions
    (named ``height``/``width`` in the graph); dynamic graphs accept ``min_size <= H <= max_height``
    and ``min_size <= W <= max_width`` (the maxima are what the 2^31-element audit checked).
    """

    name: str
    batch: Optional[int]  # None: a symbolic batch axis (``batch``), 1 to ``max_batch`` samples
    channels: int
    height: Optional[int]
    width: Optional[int]
    min_size: int
    max_height: int
    max_width: int
    max_batch: Optional[int] = None  # the largest batch a dynamic-batch graph was audited for

    @property
    def is_dynamic(self) -> bool:
        return self.height is None or self.width is None

    def max_shape(self) -> tuple[int, int, int, int]:
        """The largest ``B x C x H x W`` the graph is declared (and audited) for."""
        h = self.max_height if self.height is None else self.height
        w = self.max_width if self.width is None else self.width
        return (self.batch or self.max_batch or 1, self.channels, h, w)

    def describe(self) -> str:
        h = "height" if self.height is None else str(self.height)
        w = "width" if self.width is None else str(self.width)
        b = "batch" if self.batch is None else str(self.batch)
        text = f"{self.name}: float32[{b}x{self.channels}x{h}x{w}]"
        if self.batch is None:
            text += f" (1 <= batch <= {self.max_batch})"
        if self.is_dynamic:
            text += f" ({self.min_size} <= H <= {self.max_height}, {self.min_size} <= W <= {self.max_width})"
        return text


@dataclass(frozen=True)
class ExportMetadata:
    """Everything :func:`~n3deploy.export.export_onnx` writes into ``metadata_props``."""

    config: dict[str, Any]
    sigma: Optional[float]
    n3deploy_version: str
    input_spec: InputSpec
    precision: str = "fp32"
    opset: int = 18
    fp32_scopes: tuple[str, ...] = ()
    source: dict[str, Any] = field(default_factory=dict)

    def to_props(self) -> dict[str, str]:
        data = asdict(self)
        data["fp32_scopes"] = list(self.fp32_scopes)
        props = {"format": json.dumps(ONNX_FORMAT)}
        props.update({key: json.dumps(value, sort_keys=True) for key, value in data.items()})
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "model") -> "ExportMetadata":
        data = decode_props(props)
        if data.get("format") != ONNX_FORMAT:
            raise ModelFileError(
                f"{where}: not an n3deploy ONNX export (metadata format {data.get('format')!r}); "
                "export one with `n3deploy export --checkpoint M.safetensors -o model.onnx`"
            )
        try:
            return cls(
                config=dict(data["config"]),
                sigma=None if data.get("sigma") is None else float(data["sigma"]),
                n3deploy_version=str(data["n3deploy_version"]),
                input_spec=InputSpec(**data["input_spec"]),
                precision=normalize_precision(str(data.get("precision", "fp32"))),
                opset=int(data.get("opset", 18)),
                fp32_scopes=tuple(data.get("fp32_scopes") or ()),
                source=dict(data.get("source") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{where}: corrupt n3deploy ONNX metadata ({exc})") from None

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict view (what ``Backend.metadata`` returns): ``config``, ``sigma``, ..."""
        data = asdict(self)
        data["fp32_scopes"] = list(self.fp32_scopes)
        return data


def decode_props(props: dict[str, str]) -> dict[str, Any]:
    """``metadata_props`` with each JSON value decoded (non-JSON text is kept as a string)."""
    decoded: dict[str, Any] = {}
    for key, value in props.items():
        try:
            decoded[key] = json.loads(value)
        except (TypeError, ValueError):
            decoded[key] = value
    return decoded


def write_metadata(model: onnx.ModelProto, meta: ExportMetadata) -> onnx.ModelProto:
    """Replace ``model``'s ``metadata_props`` with ``meta`` (in place; returns ``model``)."""
    del model.metadata_props[:]
    for key, value in meta.to_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = (
        f"N3Net denoiser exported by n3deploy {meta.n3deploy_version}: {meta.input_spec.describe()}, "
        f"precision {meta.precision}"
    )
    return model


def read_metadata(model: "onnx.ModelProto | str | os.PathLike") -> ExportMetadata:
    """The :class:`ExportMetadata` of an exported graph (a path or a loaded ``ModelProto``)."""
    where = "model"
    if not isinstance(model, onnx.ModelProto):
        where = str(model)
        if not os.path.isfile(model):
            raise ModelFileError(f"{model}: no such ONNX file")
        try:
            model = onnx.load(str(model), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError and friends for non-ONNX bytes
            raise ModelFileError(f"{where}: not a readable ONNX file ({exc})") from None
    return ExportMetadata.from_props({p.key: p.value for p in model.metadata_props}, where)
