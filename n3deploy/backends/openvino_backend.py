"""The ``openvino`` backend: an exported ``.onnx`` graph compiled by OpenVINO for the CPU.

``precision="fp32"`` compiles the whole graph with ``INFERENCE_PRECISION_HINT=f32`` (set
explicitly: on CPUs with AVX512_BF16 or AMX the CPU plugin otherwise picks BF16 for the *whole*
graph, the KNN included, which costs ~0.09 dB on the paper preset).

``precision="bf16"`` follows n3deploy's reduced-precision plan (:mod:`n3deploy.precision`):
convolutions (batch-norms folded by the exporter), ReLUs and residual adds in BF16, every op of the
non-local part (the module scopes recorded as ``fp32_scopes`` in the graph's metadata, i.e.
``nls.N.aggregation``) in FP32. The CPU plugin offers no per-node precision control it honours in
BF16 mode (``disable_fp16_compression`` runtime info on the KNN nodes is dropped by its own
transformations), and marking only the convolutions BF16 in an FP32-compiled graph (explicit
Converts) leaves their outputs un-fused with the folded batch-norm biases and costs ~0.25 dB. So
the graph is cut into **precision islands** (:func:`split_islands`): the CNN parts between the KNN
aggregations are compiled with ``INFERENCE_PRECISION_HINT=bf16``, each KNN aggregation with
``f32``, and the islands are chained on the host (boundary tensors are float32 arrays; the
biggest, the embeddings, are a few MB at 481x321). :meth:`OpenVINOBackend.runtime_precisions`
reads every compiled island's runtime graph (``get_runtime_model()``, per-layer
``runtimePrecision``): the proof that no KNN op runs in BF16.

Dynamic ``H x W`` graphs are compiled once with dynamic shapes; OpenVINO's CPU plugin caches its
primitives per input shape itself, so the first call at a new size pays the kernel preparation
and later calls do not (measured: see :attr:`OpenVINOBackend.compile_seconds` and the benchmarks).
Imports only numpy, onnx and openvino: runs on deployment machines without PyTorch.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import BackendUnavailableError, ModelFileError
from ..export.metadata import decode_props
from .base import Backend, InputShapeLimits

__all__ = ["OpenVINOBackend", "Island", "split_islands", "cpu_bf16_support", "precision_unavailable"]

PRECISIONS = ("fp32", "bf16")
_HINT = {"fp32": "f32", "bf16": "bf16"}


@dataclass(frozen=True)
class Island:
    """A piece of the graph compiled at one precision: ``model`` (ONNX), its float32/int boundary
    ``inputs`` and ``outputs`` (tensor names of the whole graph), and whether it is a KNN island."""

    name: str
    knn: bool
    model: Any  # onnx.ModelProto
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def split_islands(model: Any, fp32_scopes: Sequence[str]) -> list[Island]:
    """Cut an ONNX graph into precision islands, in execution order.

    Nodes whose module scope lies in ``fp32_scopes`` (:func:`n3deploy.export.fp16.fp32_node_names`,
    the definition the FP16 graph uses) form one KNN island per scope; every other node belongs to
    CNN island ``k``, ``k`` = how many KNN scopes lie upstream of it. Islands run in the order
    ``cnn0, knn0, cnn1, knn1, ...``; each island's inputs are the tensors it reads from earlier
    islands (or the graph input), its outputs the tensors later islands or the graph read.
    Raises ``ValueError`` when the scopes match no node or the order cannot be kept.
    """
    from onnx import helper

    from ..export.audit import node_scope
    from ..export.fp16 import _in_scopes, fp32_node_names

    graph = model.graph
    blocked = set(fp32_node_names(model, fp32_scopes))
    if not blocked:
        raise ValueError(f"no node of the graph lies in the FP32 scopes {list(fp32_scopes)}")
    order = list(fp32_scopes)
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            producer[out] = i
    # island key per node: ("knn", j) or ("cnn", number of KNN scopes upstream)
    upstream: list[frozenset[int]] = []
    keys: list[tuple[str, int]] = []
    for node in graph.node:  # ONNX nodes are topologically sorted
        ups: set[int] = set()
        for inp in node.input:
            if inp in producer:
                p = producer[inp]
                ups |= upstream[p]
                if keys[p][0] == "knn":
                    ups.add(keys[p][1])
        if node.name in blocked:
            j = next(i for i, s in enumerate(order) if _in_scopes(node_scope(node), [s]))
            keys.append(("knn", j))
            ups.discard(j)
        else:
            keys.append(("cnn", len(ups)))
        upstream.append(frozenset(ups))

    def rank(key: tuple[str, int]) -> int:
        return 2 * key[1] + (1 if key[0] == "knn" else 0)

    for i, node in enumerate(graph.node):  # every input comes from an earlier (or the same) island
        for inp in node.input:
            if inp in producer and rank(keys[producer[inp]]) > rank(keys[i]):
                raise ValueError(f"node {node.name} reads {inp} from a later precision island")

    members: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        members[key].append(i)
    initializers = {t.name: t for t in graph.initializer}
    value_info = {v.name: v for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    graph_outputs = {o.name for o in graph.output}
    readers: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for i, node in enumerate(graph.node):
        for inp in node.input:
            readers[inp].add(keys[i])

    islands = []
    for key in sorted(members, key=rank):
        idx = members[key]
        nodes = [graph.node[i] for i in idx]
        produced = {o for n in nodes for o in n.output}
        inputs, seen = [], set()
        for n in nodes:
            for inp in n.input:
                if inp and inp not in produced and inp not in initializers and inp not in seen:
                    seen.add(inp)
                    inputs.append(inp)
        outputs = [o for n in nodes for o in n.output
                   if o in graph_outputs or any(r != key for r in readers.get(o, ()))]
        used_init = [initializers[name] for name in dict.fromkeys(i for n in nodes for i in n.input) if name in initializers]
        missing = [t for t in inputs + outputs if t not in value_info]
        if missing:
            raise ValueError(f"no type information for boundary tensors {missing[:3]} (run shape inference first)")
        sub = helper.make_graph(
            nodes, f"{key[0]}{key[1]}", [value_info[t] for t in inputs], [value_info[t] for t in outputs], used_init,
            value_info=[v for name, v in value_info.items() if name in produced and name not in outputs],
        )
        sub_model = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
        islands.append(Island(f"{key[0]}{key[1]}", key[0] == "knn", sub_model, tuple(inputs), tuple(outputs)))
    return islands


def cpu_bf16_support() -> dict[str, Any]:
    """What OpenVINO's CPU plugin reports: ``bf16`` (native BF16 kernels), the precision it picks
    by default (``default_precision``) and its optimisation capabilities."""
    import openvino as ov

    core = ov.Core()
    caps = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    hint = core.get_property("CPU", "INFERENCE_PRECISION_HINT")
    default = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    return {"bf16": "BF16" in caps, "default_precision": default, "capabilities": caps}


def precision_unavailable(precision: str) -> Optional[str]:
    """``None`` when this CPU runs ``precision`` natively, else why not (``bf16`` needs
    AVX512_BF16 or AMX: without them OpenVINO would quietly run FP32)."""
    if precision == "bf16" and not cpu_bf16_support()["bf16"]:
        return "this CPU has no native BF16 support (AVX512_BF16 / AMX): use precision='fp32'"
    return None


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # pragma: no cover - psutil is a core dependency
        return os.cpu_count() or 1


class OpenVINOBackend(Backend):
    """OpenVINO CPU inference of an n3deploy ONNX graph (FP32, or the BF16 plan); float32 in, float32 out."""

    name = "openvino"

    def __init__(
        self,
        model_path: "str | os.PathLike",
        device: Optional[str] = None,
        *,
        precision: str = "fp32",
        threads: Optional[int] = None,
        cache_dir: "str | os.PathLike | None" = None,
    ) -> None:
        try:
            import onnx
            import openvino as ov
        except ImportError as exc:
            raise BackendUnavailableError(f"the openvino backend needs OpenVINO ({exc}): pip install 'n3deploy[openvino]'") from None
        from ..precision import check_precision

        self._precision = check_precision(precision, PRECISIONS, "openvino backend")
        if device not in (None, "auto") and device.lower() != "cpu":
            raise BackendUnavailableError(f"the openvino backend runs on the CPU, not {device!r}")
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelFileError(f"{self.model_path}: no such ONNX file")
        try:
            proto = onnx.load(str(self.model_path))
        except Exception as exc:  # noqa: BLE001 - DecodeError, ...
            raise ModelFileError(f"{self.model_path}: not a readable ONNX file ({exc})") from None
        self._metadata = decode_props({p.key: p.value for p in proto.metadata_props})
        inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
        if len(inputs) != 1 or len(proto.graph.output) != 1:
            raise ModelFileError(f"{self.model_path}: expected one input and one output, found {len(inputs)} and {len(proto.graph.output)}")
        self._input_dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
        self._threads = threads or _physical_cores()
        self._core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": self._threads}
        if cache_dir is not None:
            config["CACHE_DIR"] = str(cache_dir)
        self._local = threading.local()
        start = time.perf_counter()
        if self._precision == "fp32":
            self._islands = [Island("graph", False, proto, (inputs[0].name,), (proto.graph.output[0].name,))]
        else:
            reason = precision_unavailable(self._precision)
            if reason is not None:
                raise BackendUnavailableError(reason)
            scopes = tuple(self._metadata.get("fp32_scopes") or ())
            if not scopes:
                raise ModelFileError(
                    f"{self.model_path}: the graph records no fp32_scopes (exported by an older n3deploy): "
                    "re-export it with `n3deploy export` for the BF16 plan"
                )
            try:
                self._islands = split_islands(proto, scopes)
            except ValueError as exc:
                raise ModelFileError(f"{self.model_path}: cannot split into precision islands: {exc}") from None
        self._compiled = []
        with tempfile.TemporaryDirectory(prefix="n3deploy-openvino-") as tmp:
            for island in self._islands:
                hint = "f32" if island.knn or self._precision == "fp32" else _HINT[self._precision]
                if len(self._islands) == 1:
                    ov_model = self._core.read_model(str(self.model_path))
                else:  # an island is a self-contained ONNX model: OpenVINO reads it from a file
                    file = Path(tmp) / f"{island.name}.onnx"
                    onnx.save_model(island.model, str(file))
                    ov_model = self._core.read_model(str(file))
                self._compiled.append(self._core.compile_model(ov_model, "CPU", {**config, "INFERENCE_PRECISION_HINT": hint}))
        self.compile_seconds = time.perf_counter() - start
        self._input_name = inputs[0].name
        self._output_name = proto.graph.output[0].name
        self._version = ov.__version__

    # -- Backend interface -------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        return self._precision

    @property
    def providers(self) -> list[str]:
        plan = f", BF16 plan: {sum(not i.knn for i in self._islands)} BF16 + {sum(i.knn for i in self._islands)} FP32 islands" \
            if self._precision == "bf16" else ", f32"
        return [f"OpenVINO {self._version} (CPU, {self._threads} threads{plan})"]

    @property
    def input_shape_limits(self) -> InputShapeLimits:
        spec = self._metadata.get("input_spec") or {}
        b, c, h, w = (list(self._input_dims) + [None] * 4)[:4]
        return InputShapeLimits(
            channels=c or int(spec.get("channels", 1)), batch=b, height=h, width=w,
            min_size=int(spec.get("min_size", 1)),
            max_height=h or spec.get("max_height"), max_width=w or spec.get("max_width"),
            max_batch=None if b else spec.get("max_batch"),
        )

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    @property
    def islands(self) -> list[Island]:
        """The precision islands in execution order (one FP32 island for ``precision="fp32"``)."""
        return list(self._islands)

    @property
    def compiled_models(self) -> list[Any]:
        """The ``openvino.CompiledModel`` of every island, in execution order."""
        return list(self._compiled)

    def runtime_precisions(self) -> list[dict[str, str]]:
        """Every executed layer of every island: ``island``, ``knn`` (``"1"`` if in a KNN island),
        ``layer_type``, ``precision`` (``runtimePrecision``) and ``original`` (the ONNX node names)."""
        rows = []
        for island, compiled in zip(self._islands, self._compiled):
            for op in compiled.get_runtime_model().get_ops():
                info = op.get_rt_info()
                rows.append({
                    "island": island.name, "knn": "1" if island.knn else "0",
                    "layer_type": info["layerType"].astype(str),
                    "precision": info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "",
                    "original": info["originalLayersNames"].astype(str),
                })
        return rows

    def _requests(self) -> list[Any]:
        reqs = getattr(self._local, "requests", None)
        if reqs is None:  # one infer request per island and thread: run() is thread-safe
            reqs = self._local.requests = [c.create_infer_request() for c in self._compiled]
        return reqs

    def _forward(self, x: np.ndarray) -> np.ndarray:
        values: dict[str, np.ndarray] = {self._input_name: x}
        for island, compiled, req in zip(self._islands, self._compiled, self._requests()):
            feeds = {name: values[name] for name in island.inputs}
            req.infer(feeds, share_inputs=True)
            for i, name in enumerate(island.outputs):  # views: read by later islands of this call only
                values[name] = req.get_output_tensor(i).data
        return values[self._output_name].copy()  # the request reuses its buffer on the next call

    def run_impl(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"OpenVINOBackend({str(self.model_path)!r}, precision={self._precision!r}, threads={self._threads})"
