"""PyTorch :class:`~n3deploy.model.N3Net` -> one self-contained, audited, verified ONNX file.

Pipeline of :func:`export_onnx` (each stage shown on a progress bar):

1. **Capture** with ``torch.export`` (the dynamo exporter of ``torch.onnx``): fixed ``B x C x H x W``
   or symbolic height/width (``Dim.DYNAMIC`` bounded by ``min_size`` and the declared maximum), so
   every shape in the graph is computed from the input's shape.
2. **Translate** to ONNX (opset >= 18) without onnxscript's optimizer, then name every node after
   the torch module that produced it (``nls.0.aggregation/node_MatMul_12``: the FP16 block list,
   ``n3deploy inspect`` and TensorRT's layer names all read these scopes), lower ``CastLike`` to
   ``Cast`` and rename the symbolic dimensions ``height``/``width``.
3. **Simplify** with onnxslim (constant folding, dead-code elimination, shape inference).
4. **FP16** (``fp16=True``): :func:`~n3deploy.export.fp16.convert_to_mixed_fp16` keeps the KNN
   chain FP32 with explicit Casts; simplified again. Then each later N3 block's tensors get their
   own symbolic dim names (:func:`~n3deploy.export.lean.separate_block_shapes`), so ONNX Runtime's
   default memory reuse cannot hold one block's buffers until the next block.
5. **Metadata** (:class:`~n3deploy.export.metadata.ExportMetadata`), ``onnx.checker`` full check and
   the TensorRT **audit** at the declared maximum size (:func:`~n3deploy.export.audit.audit_model`);
   any finding raises :class:`~n3deploy.export.audit.GraphAuditError` and nothing is written.
6. **Write** atomically, one file (weights inline), then **verify**: ONNX Runtime against the
   PyTorch model on random inputs at the fixed size, or for a dynamic graph at probe sizes chosen to
   cross every regime of the static KNN's shape logic (tiny grids, each padding residue, one and
   several column tiles). ``torch.export`` records guards it cannot prove for all sizes; this
   check is what shows the graph is right at sizes other than the traced one.

Why the dynamo exporter and not ``dynamo=False``: the static KNN computes padding and window
geometry with Python integer arithmetic on sizes (``%``, ``//``, ``max``); TorchScript tracing
freezes those to the example's values, the dynamo exporter keeps them symbolic.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import onnx

from .. import __version__
from ..errors import N3DeployError
from ..fileio import atomic_path
from .audit import MAX_ELEMENTS, AuditReport, GraphAuditError, audit_model, tensor_elem_types
from .lean import separate_block_shapes
from .metadata import INPUT_NAME, OUTPUT_NAME, ExportMetadata, InputSpec, write_metadata

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_MAX_HEIGHT",
    "DEFAULT_MAX_WIDTH",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ExportError",
    "ExportResult",
    "VerifyCase",
    "export_onnx",
    "probe_sizes",
]

DEFAULT_OPSET = 18
DEFAULT_MAX_HEIGHT = 2160
DEFAULT_MAX_WIDTH = 3840
DEFAULT_MAX_BATCH = 8


class ExportError(N3DeployError, RuntimeError):
    """The model could not be exported as a correct, TensorRT-ready graph; the message says why."""


@dataclass(frozen=True)
class VerifyCase:
    """ONNX Runtime vs PyTorch on one random input, both measured against PyTorch in float64.

    ``max_abs``: |ONNX Runtime - PyTorch float32|; ``onnx_vs_f64`` / ``torch_vs_f64``: each one's
    distance to the float64 result. A faithful graph is about as close to float64 as PyTorch's
    own float32 run (summation order differs, nothing else); a wrong one is off by far more.
    """

    shape: tuple[int, int, int, int]
    max_abs: float
    onnx_vs_f64: float
    torch_vs_f64: float
    ref_max_abs: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.onnx_vs_f64)) and self.onnx_vs_f64 <= self.tolerance


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and checked."""

    path: Path
    metadata: ExportMetadata
    audit: AuditReport
    verification: list[VerifyCase] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        spec = self.metadata.input_spec
        lines = [
            f"wrote {self.path} ({self.path.stat().st_size / 1e6:.2f} MB, {self.metadata.precision}, opset {self.metadata.opset})",
            f"  input {spec.describe()}",
            f"  audit: {'PASS' if self.audit.ok else 'FAIL'}; largest tensor at "
            f"{'x'.join(map(str, self.audit.audited_shape or ()))}: {self.audit.max_elements:,} elements (< 2^31)",
        ]
        for case in self.verification:
            lines.append(
                f"  verified at {'x'.join(map(str, case.shape))}: |onnx - torch| {case.max_abs:.2e}; vs float64: "
                f"onnx {case.onnx_vs_f64:.2e}, torch float32 {case.torch_vs_f64:.2e} (tolerance {case.tolerance:.1e})"
            )
        lines.append("  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers
def probe_sizes(min_size: int, max_height: int, max_width: int, stride: int = 5, tile: Optional[int] = None) -> list[tuple[int, int]]:
    """Heights/widths at which a dynamic graph is checked against PyTorch.

    Chosen for the static KNN's regimes, where ``torch.export`` records guards it cannot prove for
    all sizes: the minimum size, grids smaller than the 15-patch window, every padding residue
    modulo the stride, one and several column tiles, and block/patch column counts that are exact
    multiples of the KNN's column tile (``tile``, default :data:`n3deploy.knn.static.DEFAULT_TILE`).
    """
    if tile is None:
        from ..knn.static import DEFAULT_TILE as tile
    candidates = [
        (min_size, min_size),
        (min_size + 1, min_size + 4),
        (37, 53),
        (64, 64),
        (41, 2 * tile * stride),  # 2*tile block columns, no padding
        (29, (2 * tile + 1) * stride),  # 2*tile patch columns
        (97, 123),
        (131, 211),
        (212, 96),
    ]
    sizes = []
    for h, w in candidates:
        h, w = min(max(h, min_size), max_height), min(max(w, min_size), max_width)
        if (h, w) not in sizes:
            sizes.append((h, w))
    return sizes


def _trace_size(min_size: int, max_height: int, max_width: int) -> tuple[int, int]:
    """The example size torch.export traces a dynamic graph at: generic (several tiles, padding
    needed, grids larger than the window), within the declared range."""
    return min(max(173, min_size), max_height), min(max(181, min_size), max_width)


def _module_scope(node: onnx.NodeProto) -> str:
    """Innermost torch module path of a node, from the dynamo exporter's ``name_scopes`` metadata."""
    props = {p.key: p.value for p in node.metadata_props}
    raw = props.get("pkg.torch.onnx.name_scopes")
    if not raw:
        return "n3net"
    try:
        scopes = json.loads(raw.replace("'", '"'))
    except ValueError:
        return "n3net"
    modules = [s for s in scopes[:-1] if s]  # the last entry is the op itself
    return modules[-1] if modules else "n3net"


def _scopes_by_tensor(model: onnx.ModelProto) -> dict[str, str]:
    """Output tensor name -> module scope of its producer, read before simplification.

    onnxslim drops node metadata and renames the nodes it fuses, but keeps the names of the
    tensors that survive; :func:`_apply_scopes` uses this map to name the simplified nodes.
    """
    return {o: _module_scope(node) for node in model.graph.node for o in node.output if o}


def _apply_scopes(model: onnx.ModelProto, scopes: dict[str, str]) -> None:
    """Name every node ``<module scope>/<name>`` and drop the bulky per-node torch metadata.

    A node keeps the scope already in its name; otherwise it takes the scope recorded for one of
    its output tensors; a node the simplifier created with new outputs takes the scope of its
    consumers (a Pad folded into the KNN belongs to the KNN), else of its producers.
    """
    nodes = list(model.graph.node)
    found: dict[int, str] = {}
    for i, node in enumerate(nodes):
        if "/" in node.name:
            found[i] = node.name.split("/", 1)[0]
        else:
            hit = next((scopes[o] for o in node.output if o in scopes), None)
            if hit is not None:
                found[i] = hit
    producer_of = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    consumers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            if name in producer_of:
                consumers.setdefault(producer_of[name], []).append(i)
    for i in reversed(range(len(nodes))):
        if i not in found:
            hit = next((found[c] for c in consumers.get(i, []) if c in found), None)
            if hit is not None:
                found[i] = hit
    for i, node in enumerate(nodes):
        if i not in found:
            found[i] = next((found[producer_of[n]] for n in node.input if n in producer_of and producer_of[n] in found), "n3net")
        base = node.name.split("/", 1)[-1] or node.op_type
        node.name = f"{found[i]}/{base}"
        del node.metadata_props[:]


def _lower_castlike(model: onnx.ModelProto) -> None:
    """``CastLike(x, like)`` -> ``Cast(x, to=type(like))`` (onnx-tensorrt has no CastLike)."""
    types = tensor_elem_types(model)
    for node in model.graph.node:
        if node.op_type != "CastLike" or node.domain not in ("", "ai.onnx"):
            continue
        target = types.get(node.input[1])
        if not target:
            raise ExportError(f"cannot lower {node.name}: the type of {node.input[1]!r} is unknown")
        node.op_type = "Cast"
        del node.input[1]
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("to", target))


def _rename_dims(model: onnx.ModelProto, names: dict[str, str]) -> None:
    """Rename symbolic dimensions (``s53`` -> ``height``) everywhere, expressions included."""
    if not names:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    graph = model.graph
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = pattern.sub(lambda m: names[m.group(1)], dim.dim_param)


# Constants above this size stay computed in the graph: in a fixed-size export the KNN's index
# tables and masks would otherwise be folded into initializers (a 321x481 paper graph grew to 60 MB).
FOLD_LIMIT_BYTES = 1 << 16


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim: constant folding (up to 64 KiB per tensor), dead code, redundant casts/reshapes."""
    import onnxslim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slim = onnxslim.slim(model, size_threshold=FOLD_LIMIT_BYTES)
    if slim is None:
        raise ExportError("onnxslim returned no model")
    return slim


def _check_ranges(ep, dims: dict[str, tuple[int, int]]) -> dict[str, str]:
    """Symbols torch.export gave the input's height/width, checked against the declared ranges.

    Returns ``{symbol: "height"|"width"}``. A dimension that torch.export specialised to a constant,
    or whose range it narrowed, means the model's code does not support every size: fail.
    """
    placeholder = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs)
    shape = placeholder.meta["val"].shape
    renames = {}
    for axis, label in ((0, "batch"), (2, "height"), (3, "width")):
        if label not in dims:
            continue
        size = shape[axis]
        expr = getattr(getattr(size, "node", None), "expr", None)
        if expr is None or not getattr(expr, "is_symbol", False):
            raise ExportError(
                f"torch.export specialised the input {label} to {size}: the model's code treats it as a "
                "constant, so no dynamic-size graph can be exported"
            )
        lo, hi = dims[label]
        if label == "batch":
            lo = max(lo, 2)  # torch.export reports sizes >= 2 (0/1 specialisation); verify runs batch 1
        bounds = ep.range_constraints.get(expr)
        if bounds is not None and (int(bounds.lower) > lo or (bounds.upper.is_finite and int(bounds.upper) < hi)):
            raise ExportError(
                f"torch.export narrowed the input {label} to [{bounds.lower}, {bounds.upper}] instead of [{lo}, {hi}]: "
                "the model's code only supports part of the declared range"
            )
        renames[str(expr)] = label
    return renames


def _prepare(model: Any):
    """An eval-mode float32 CPU copy using the static (exportable) KNN."""
    from ..model import N3Net

    if not isinstance(model, N3Net):
        raise ExportError(f"export_onnx expects an n3deploy N3Net, got {type(model).__name__}")
    prepared = copy.deepcopy(model).float().cpu().eval()
    if prepared.knn != "static":
        prepared.set_knn("static")  # same weights; the reference KNN uses data-dependent shapes
    return prepared


def _verify(model: Any, path: Path, shapes: Sequence[tuple[int, int, int, int]], rel_tol: float, seed: int = 0) -> list[VerifyCase]:
    """Run the written file with ONNX Runtime and the PyTorch model (float32 and float64) on the same
    random inputs. Tolerance on |ONNX - float64|: ``rel_tol`` x output scale, or 10x PyTorch float32's
    own distance to float64 when that is larger (numerically sharp weights, e.g. random ones)."""
    import onnxruntime as ort
    import torch

    from ..backends.onnxruntime_backend import make_session_options

    session = ort.InferenceSession(str(path), make_session_options(), providers=["CPUExecutionProvider"])
    model64 = copy.deepcopy(model).double()
    rng = np.random.default_rng(seed)
    cases = []
    for shape in shapes:
        x = rng.random(shape, dtype=np.float32)
        with torch.no_grad():
            ref32 = model(torch.from_numpy(x)).numpy().astype(np.float64)
            ref64 = model64(torch.from_numpy(x).double()).numpy()
        out = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].astype(np.float64)
        if out.shape != ref64.shape:
            cases.append(VerifyCase(tuple(shape), math.inf, math.inf, 0.0, 0.0, 0.0))
            continue
        scale = float(np.abs(ref64).max())
        torch_err = float(np.abs(ref32 - ref64).max())
        cases.append(
            VerifyCase(
                shape=tuple(shape),
                max_abs=float(np.abs(out - ref32).max()),
                onnx_vs_f64=float(np.abs(out - ref64).max()),
                torch_vs_f64=torch_err,
                ref_max_abs=scale,
                tolerance=max(rel_tol * max(1.0, scale), 10.0 * torch_err),
            )
        )
    return cases


# --------------------------------------------------------------------------- main entry
def export_onnx(
    model: Any,
    path: "str | Path",
    *,
    height: Optional[int] = None,
    width: Optional[int] = None,
    batch: "int | str | None" = None,
    max_batch: Optional[int] = None,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    sigma: Optional[float] = None,
    max_height: int = DEFAULT_MAX_HEIGHT,
    max_width: int = DEFAULT_MAX_WIDTH,
    verify: bool = True,
    progress: bool = True,
    source: Optional[dict[str, Any]] = None,
) -> ExportResult:
    """Export ``model`` (an :class:`~n3deploy.model.N3Net`) to one ONNX file at ``path``.

    Args:
        height, width: fixed input size; both ``None`` (default) gives symbolic ``height``/``width``
            valid from ``config.min_size`` up to ``max_height`` x ``max_width``.
        batch: fixed batch size ``B`` of the ``B x C x H x W`` float32 input ``noisy``, or
            ``"dynamic"``: a symbolic ``batch`` axis from 1 to ``max_batch`` (what the 2^31 audit
            checks, together with the maximum size), so a caller can send several tiles at once.
            Default (``None``): 1 for a dynamic-size graph; ``"dynamic"`` for a fixed-size graph,
            whose shapes would otherwise all be concrete (ONNX Runtime's default memory planner
            then pairs the two N3 blocks' equal-sized buffers and keeps them alive in between:
            :mod:`~n3deploy.export.lean`).
        max_batch: the largest batch of a symbolic batch axis (default :data:`DEFAULT_MAX_BATCH`;
            for the fixed-size default, at most the largest batch that keeps every tensor under
            2^31 elements, at least 1).
        opset: ONNX opset of the default domain (>= 18).
        fp16: write the strongly typed mixed-precision graph (FP16 convolutions, FP32 KNN chain,
            FP32 input/output) instead of FP32.
        sigma: noise level (0-255) recorded in the metadata; default ``model.metadata['sigma']``.
        max_height, max_width: declared maximum size of a dynamic graph (the 2^31 audit uses it).
        verify: compare ONNX Runtime with PyTorch after writing (see module docstring).
        source: provenance recorded in the metadata (default: the model's checkpoint metadata).

    Returns an :class:`ExportResult`. Raises :class:`ExportError` when the model cannot be captured
    or the file disagrees with PyTorch, :class:`GraphAuditError` when the graph is not TensorRT-ready.
    """
    import torch
    from tqdm.auto import tqdm

    path = Path(path)
    if opset < 18:
        raise ExportError(f"opset {opset} is too old: n3deploy exports opset >= 18")
    if (height is None) != (width is None):
        raise ExportError("give both --height and --width for a fixed-size graph, or neither for a dynamic one")
    fit_max_batch = batch is None and height is not None and max_batch is None
    if batch is None:
        batch = 1 if height is None else "dynamic"
    dynamic_batch = batch == "dynamic"
    if not dynamic_batch and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ExportError(f"batch must be an integer >= 1 or 'dynamic', got {batch!r}")
    if max_batch is None:
        max_batch = DEFAULT_MAX_BATCH
    if dynamic_batch and max_batch < 1:
        raise ExportError(f"max_batch must be >= 1, got {max_batch}")
    example_batch = 2 if dynamic_batch else int(batch)
    prepared = _prepare(model)
    cfg = prepared.config
    lo = cfg.min_size
    dynamic = height is None
    if dynamic:
        if min(max_height, max_width) < lo:
            raise ExportError(f"max size {max_height}x{max_width} is below the model's minimum {lo}x{lo}")
        example_hw = _trace_size(lo, max_height, max_width)
    else:
        if min(height, width) < lo:
            raise ExportError(f"{height}x{width} is below the model's minimum size {lo}x{lo}")
        example_hw = (height, width)
        max_height, max_width = height, width
    if sigma is None:
        sigma = getattr(model, "metadata", {}).get("sigma")
    if source is None:
        source = {k: v for k, v in getattr(model, "metadata", {}).items() if k != "sigma"}

    # capture, translate, simplify, [fp16], audit, write, [verify]
    bar = tqdm(total=5 + fp16 + verify, desc="export", unit="stage", disable=not progress)
    seconds: dict[str, float] = {}

    def stage(name: str) -> None:
        seconds[name] = time.perf_counter()
        bar.set_postfix_str(name)

    def done(name: str) -> None:
        seconds[name] = time.perf_counter() - seconds[name]
        bar.update(1)

    example = torch.rand(example_batch, cfg.in_channels, *example_hw, generator=torch.Generator().manual_seed(0))
    try:
        # 1. capture
        stage("capture")
        dynamic_shapes = None
        auto = torch.export.Dim.DYNAMIC
        axes: dict[int, Any] = {}
        if dynamic_batch:
            axes[0] = auto(min=1, max=max_batch)
        if dynamic:
            axes.update({2: auto(min=lo, max=max_height), 3: auto(min=lo, max=max_width)})
        if axes:
            dynamic_shapes = {"x": axes}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ep = torch.export.export(prepared, (example,), dynamic_shapes=dynamic_shapes, strict=False)
        except Exception as exc:
            raise ExportError(f"torch.export could not capture the model: {type(exc).__name__}: {str(exc)[:2000]}") from exc
        ranges = {"height": (lo, max_height), "width": (lo, max_width)} if dynamic else {}
        if dynamic_batch:
            ranges["batch"] = (1, max_batch)
        renames = _check_ranges(ep, ranges)
        done("capture")

        # 2. translate
        stage("translate")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    ep,
                    dynamo=True,
                    opset_version=opset,
                    external_data=False,
                    optimize=False,
                    verbose=False,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                )
        except Exception as exc:
            raise ExportError(f"torch.onnx could not translate the model: {type(exc).__name__}: {str(exc)[:2000]}") from exc
        onnx_model = program.model_proto
        scopes = _scopes_by_tensor(onnx_model)
        _apply_scopes(onnx_model, scopes)
        _lower_castlike(onnx_model)
        _rename_dims(onnx_model, renames)
        done("translate")

        # 3. simplify
        stage("simplify")
        onnx_model = _simplify(onnx_model)
        _apply_scopes(onnx_model, scopes)
        _rename_dims(onnx_model, renames)
        done("simplify")

        from ..precision import fp32_scopes as plan_fp32_scopes

        # recorded for every graph: the FP16 graph is converted by them, OpenVINO BF16 follows them
        fp32_scopes: tuple[str, ...] = plan_fp32_scopes(prepared)
        if fp16:
            from .fp16 import convert_to_mixed_fp16

            stage("fp16")
            onnx_model = _simplify(convert_to_mixed_fp16(onnx_model, fp32_scopes))
            _apply_scopes(onnx_model, {})
            done("fp16")

        # separate the N3 blocks' symbolic shapes: lean under ONNX Runtime's default memory reuse
        separate_block_shapes(onnx_model)

        # 4. metadata, checks, audit
        stage("audit")

        def metadata_for(largest_batch: int) -> ExportMetadata:
            spec = InputSpec(
                name=INPUT_NAME, batch=None if dynamic_batch else int(batch), channels=cfg.in_channels,
                height=None if dynamic else height, width=None if dynamic else width,
                min_size=lo, max_height=max_height, max_width=max_width,
                max_batch=largest_batch if dynamic_batch else None,
            )
            return ExportMetadata(
                config=cfg.to_dict(), sigma=None if sigma is None else float(sigma), n3deploy_version=__version__,
                input_spec=spec, precision="fp16" if fp16 else "fp32", opset=opset,
                fp32_scopes=fp32_scopes, source=dict(source or {}),
            )

        if fit_max_batch:  # every tensor grows linearly with the batch: the largest batch under 2^31
            write_metadata(onnx_model, metadata_for(1))
            one = audit_model(onnx_model, max_height=max_height, max_width=max_width, full_check=False)
            per_sample = one.largest[0].numel if one.largest else 1
            max_batch = max(1, min(max_batch, (MAX_ELEMENTS - 1) // max(per_sample, 1)))
        meta = metadata_for(max_batch)
        write_metadata(onnx_model, meta)
        onnx_model.producer_name, onnx_model.producer_version = "n3deploy", __version__
        report = audit_model(onnx_model, max_height=max_height, max_width=max_width)
        report.source = str(path)
        report.raise_for_problems()
        done("audit")

        # 5. write (atomic, weights inline)
        stage("write")
        if onnx_model.ByteSize() >= 2**31:
            raise ExportError("the graph is over 2 GB: it cannot be one self-contained ONNX file")
        with atomic_path(path) as tmp:
            onnx.save_model(onnx_model, str(tmp), save_as_external_data=False)
            cases: list[VerifyCase] = []
            if verify:
                done("write")
                stage("verify")
                sizes = [example_hw] if not dynamic else probe_sizes(lo, max_height, max_width, cfg.stride)
                batches = [1, min(3, max_batch)] if dynamic_batch else [int(batch)]
                shapes = [(b, cfg.in_channels, h, w) for b in batches for h, w in sizes[: len(sizes) if b == batches[0] else 2]]
                cases = _verify(prepared, tmp, shapes, rel_tol=5e-2 if fp16 else 1e-4)
                bad = [c for c in cases if not c.ok]
                if bad:
                    detail = "; ".join(
                        f"{'x'.join(map(str, c.shape))}: |onnx - float64| {c.onnx_vs_f64:.3g} > {c.tolerance:.3g} "
                        f"(PyTorch float32: {c.torch_vs_f64:.3g})" for c in bad
                    )
                    raise ExportError(f"the exported graph disagrees with PyTorch ({detail}); nothing was written")
                done("verify")
            else:
                done("write")
        report.file_bytes = path.stat().st_size
    finally:
        bar.close()
    return ExportResult(path=path, metadata=meta, audit=report, verification=cases, seconds=seconds)
