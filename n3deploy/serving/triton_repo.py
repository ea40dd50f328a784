"""Triton Inference Server model repositories for n3deploy graphs and TensorRT plans.

``write_triton_repo(onnx, out)`` lays out::

    out/NAME/config.pbtxt          platform "onnxruntime_onnx"
    out/NAME/1/model.onnx
    out/NAME_trt/config.pbtxt      platform "tensorrt_plan" (only with a plan)
    out/NAME_trt/1/model.plan

Each ``config.pbtxt`` is built as Triton's own ``ModelConfig`` protobuf message
(``tritonclient.grpc.model_config_pb2``) and written with ``google.protobuf.text_format``; the
repository is written into a temporary folder beside ``out`` and renamed into place.

What goes into a config, from the graph (or the plan's metadata):

* inputs/outputs with their names, ``TYPE_FP32`` and dims (``-1`` for symbolic H and W). Batching
  only when the graph's batch axis is symbolic: then ``max_batch_size`` > 0 and dims without the
  batch axis, plus a dynamic batcher (Triton batches requests of identical shapes); a fixed batch
  gives ``max_batch_size: 0`` and the full dims.
* ``instance_group``: ``count`` instances of ``KIND_CPU`` (``KIND_GPU`` with ``gpu``).
* ONNX Runtime parameters: ``enable_mem_pattern: 0`` (the per-shape memory plan is useless for
  dynamic H/W and pins memory), ``enable_mem_arena: 1``, ``intra_op_thread_count`` =
  cores / instances, ``inter_op_thread_count: 1``, ``execution_mode: 0`` (sequential) -- the
  settings of n3deploy's own backend that Triton exposes (it has no ``enable_mem_reuse``).
* with ``gpu``: the TensorRT execution accelerator (``precision_mode: FP16``, engine cache).
* a ``model_warmup`` with random data; the n3deploy model config and sigma as ``parameters``
  (``n3deploy_config``, ``n3deploy_sigma``), which the remote backend reads to keep the patch grid.

:func:`validate_triton_repo` parses every ``config.pbtxt`` back into ``ModelConfig`` and
cross-checks names, dtypes and dims against the graph and the plan metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import ModelFileError, N3DeployError, StaticGraphMemoryWarning
from ..fileio import sha256_file

__all__ = [
    "TritonRepoError", "TensorSpec", "ModelIO", "RepoOptions", "onnx_io", "plan_io",
    "onnx_model_config", "plan_model_config", "write_triton_repo", "validate_triton_repo", "read_config",
]

_ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16", 7: "TYPE_INT64", 6: "TYPE_INT32", 2: "TYPE_UINT8"}
TRT_CACHE_PATH = "/tmp/n3deploy_trt_cache"
WARMUP_SIZE = 128  # px: H and W of the warm-up request of a dynamic graph


class TritonRepoError(N3DeployError, ValueError):
    """A repository that cannot be written, or a config that does not match its model."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output: ``dims`` is the full shape, ``-1`` for a symbolic axis."""

    name: str
    data_type: str  # Triton's TYPE_* name
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelIO:
    """A model's tensors. ``batch_dynamic``: the first axis is symbolic in every tensor (Triton may batch)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: dict[str, str]
    opt_shape: Optional[tuple[int, ...]] = None  # a plan's optimisation shape (its warm-up)

    @property
    def batch_dynamic(self) -> bool:
        return all(t.dims and t.dims[0] == -1 for t in self.inputs + self.outputs)


@dataclass(frozen=True)
class RepoOptions:
    """``name``: model name (folder); ``instances`` per model; ``max_batch``: Triton's
    ``max_batch_size`` for graphs with a dynamic batch axis; ``gpu``: KIND_GPU + TensorRT
    accelerator; ``threads``: ONNX Runtime intra-op threads per instance (default cores/instances)."""

    name: str = "n3net"
    instances: int = 1
    max_batch: int = 8
    gpu: bool = False
    threads: Optional[int] = None
    queue_delay_us: int = 5000

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise TritonRepoError(f"--name must be a plain folder name, got {self.name!r}")
        if self.instances < 1:
            raise TritonRepoError(f"--instances must be >= 1, got {self.instances}")
        if self.max_batch < 1:
            raise TritonRepoError(f"--max-batch must be >= 1, got {self.max_batch}")

    @property
    def intra_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.instances)


def _pb():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise TritonRepoError(f"Triton model configs need tritonclient[grpc] ({exc}): pip install 'n3deploy[serve]'") from None
    return model_config_pb2, text_format


# ------------------------------------------------------------------ reading models
def _n3deploy_parameters(props: dict[str, str]) -> dict[str, str]:
    try:
        from ..export.metadata import decode_props

        data = decode_props(props)
    except Exception:
        return {}
    params: dict[str, str] = {}
    if isinstance(data.get("config"), dict):
        params["n3deploy_config"] = json.dumps(data["config"], sort_keys=True)
    if data.get("sigma") is not None:
        params["n3deploy_sigma"] = str(data["sigma"])
    if data.get("precision"):
        params["n3deploy_precision"] = str(data["precision"])
    return params


def onnx_io(path: "str | os.PathLike") -> ModelIO:
    """The graph's inputs and outputs (initializers excluded) and its n3deploy metadata."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable ONNX file ({exc})") from None
    initializers = {t.name for t in model.graph.initializer}

    def spec(value: Any) -> TensorSpec:
        tt = value.type.tensor_type
        if tt.elem_type not in _ONNX_TYPES:
            raise TritonRepoError(f"{path}: tensor {value.name!r} has ONNX element type {tt.elem_type}, which this tool does not map")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        return TensorSpec(value.name, _ONNX_TYPES[tt.elem_type], dims)

    inputs = tuple(spec(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(spec(v) for v in model.graph.output)
    return ModelIO(inputs, outputs, _n3deploy_parameters({p.key: p.value for p in model.metadata_props}))


def plan_io(path: "str | os.PathLike") -> ModelIO:
    """A TensorRT plan's tensors from its metadata (``model.plan.json``): dims ``-1`` where the
    profile's min and max differ."""
    from ..tensorrt.metadata import read_metadata

    meta = read_metadata(path)
    limits = meta.input_shape_limits()
    lo, hi, opt = limits["min"], limits["max"], limits["opt"]
    dims = tuple(a if a == b else -1 for a, b in zip(lo, hi))
    tensors = lambda names: tuple(TensorSpec(n, "TYPE_FP32", dims) for n in names)  # noqa: E731
    return ModelIO(tensors([meta.input_name]), tensors(meta.output_names), _n3deploy_parameters(dict(meta.onnx_metadata)), tuple(opt))


# ------------------------------------------------------------------ building configs
def _tensors(pb: Any, specs: tuple[TensorSpec, ...], batching: bool, cls: Any) -> list[Any]:
    return [cls(name=s.name, data_type=pb.DataType.Value(s.data_type), dims=list(s.dims[1:] if batching else s.dims)) for s in specs]


def _warmup_dims(io: ModelIO, spec: TensorSpec, batching: bool) -> list[int]:
    if io.opt_shape is not None:
        shape = list(io.opt_shape)
    else:
        shape = [1 if d == -1 else d for d in spec.dims[:2]] + [WARMUP_SIZE if d == -1 else d for d in spec.dims[2:]]
    if not batching and spec.dims and spec.dims[0] == -1:
        shape[0] = 1
    return shape[1:] if batching else shape


def _common(pb: Any, io: ModelIO, opts: RepoOptions, name: str, kind: str) -> Any:
    batching = io.batch_dynamic
    config = pb.ModelConfig(name=name, max_batch_size=opts.max_batch if batching else 0)
    config.input.extend(_tensors(pb, io.inputs, batching, pb.ModelInput))
    config.output.extend(_tensors(pb, io.outputs, batching, pb.ModelOutput))
    config.instance_group.append(pb.ModelInstanceGroup(count=opts.instances, kind=pb.ModelInstanceGroup.Kind.Value(kind)))
    if batching:
        config.dynamic_batching.max_queue_delay_microseconds = opts.queue_delay_us
    warm = pb.ModelWarmup(name="random_input", batch_size=1)
    for spec in io.inputs:
        warm.inputs[spec.name].CopyFrom(
            pb.ModelWarmup.Input(data_type=pb.DataType.Value(spec.data_type), dims=_warmup_dims(io, spec, batching), random_data=True)
        )
    config.model_warmup.append(warm)
    for key, value in io.parameters.items():
        config.parameters[key].string_value = value
    return config


def onnx_model_config(io: ModelIO, opts: RepoOptions) -> Any:
    """The ``ModelConfig`` of an ONNX graph on Triton's onnxruntime backend."""
    pb, _ = _pb()
    config = _common(pb, io, opts, opts.name, "KIND_GPU" if opts.gpu else "KIND_CPU")
    config.platform = "onnxruntime_onnx"
    config.backend = "onnxruntime"
    config.default_model_filename = "model.onnx"
    for key, value in {
        "enable_mem_pattern": "0", "enable_mem_arena": "1", "intra_op_thread_count": str(opts.intra_threads),
        "inter_op_thread_count": "1", "execution_mode": "0",
    }.items():
        config.parameters[key].string_value = value
    config.optimization.graph.level = 1
    if opts.gpu:
        trt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        trt.parameters.update({
            "precision_mode": "FP16", "max_workspace_size_bytes": str(1 << 30),
            "trt_engine_cache_enable": "1", "trt_engine_cache_path": TRT_CACHE_PATH,
        })
    return config


def plan_model_config(io: ModelIO, opts: RepoOptions) -> Any:
    """The ``ModelConfig`` of a TensorRT plan (Triton's tensorrt backend; always KIND_GPU)."""
    pb, _ = _pb()
    config = _common(pb, io, opts, f"{opts.name}_trt", "KIND_GPU")
    config.platform = "tensorrt_plan"
    config.backend = "tensorrt"
    config.default_model_filename = "model.plan"
    return config


def config_text(config: Any) -> str:
    _, text_format = _pb()
    return text_format.MessageToString(config)


def read_config(path: "str | os.PathLike") -> Any:
    """Parse a ``config.pbtxt`` into Triton's ``ModelConfig`` (strict: unknown fields fail)."""
    pb, text_format = _pb()
    try:
        return text_format.Parse(Path(path).read_text(), pb.ModelConfig())
    except text_format.ParseError as exc:
        raise TritonRepoError(f"{path}: not a valid Triton ModelConfig ({exc})") from None


# ------------------------------------------------------------------ checking
def check_config(config: Any, io: ModelIO, *, platform: str, where: str = "config.pbtxt") -> None:
    """Raise :class:`TritonRepoError` unless ``config`` describes ``io`` as Triton expects."""
    pb, _ = _pb()
    problems: list[str] = []
    if config.platform != platform:
        problems.append(f"platform {config.platform!r}, expected {platform!r}")
    batching = config.max_batch_size > 0
    if batching and not io.batch_dynamic:
        problems.append(f"max_batch_size {config.max_batch_size} but the model's batch axis is fixed")
    if not batching and io.batch_dynamic:
        problems.append("max_batch_size 0 but the model's batch axis is dynamic (batching switched off)")
    if config.HasField("dynamic_batching") and not batching:
        problems.append("dynamic_batching needs max_batch_size > 0")
    for kind, declared, actual in (("input", config.input, io.inputs), ("output", config.output, io.outputs)):
        by_name = {t.name: t for t in declared}
        if set(by_name) != {t.name for t in actual}:
            problems.append(f"{kind}s {sorted(by_name)}, the model has {sorted(t.name for t in actual)}")
            continue
        for spec in actual:
            t = by_name[spec.name]
            want = list(spec.dims[1:] if batching else spec.dims)
            if pb.DataType.Name(t.data_type) != spec.data_type:
                problems.append(f"{kind} {spec.name!r}: {pb.DataType.Name(t.data_type)}, the model has {spec.data_type}")
            if list(t.dims) != want:
                problems.append(f"{kind} {spec.name!r}: dims {list(t.dims)}, the model needs {want}")
    for warm in config.model_warmup:
        for name, inp in warm.inputs.items():
            fed = next((s for s in io.inputs if s.name == name), None)
            if fed is None:
                problems.append(f"warm-up {warm.name!r} feeds unknown input {name!r}")
                continue
            fit = fed.dims[1:] if batching else fed.dims
            if len(inp.dims) != len(fit) or any(d < 1 or (w != -1 and d != w) for d, w in zip(inp.dims, fit)):
                problems.append(f"warm-up {warm.name!r}: dims {list(inp.dims)} do not fit {list(fit)}")
    if problems:
        raise TritonRepoError(f"{where}: " + "; ".join(problems))


def validate_triton_repo(repo: "str | os.PathLike", onnx_path: "str | os.PathLike", plan_path: "str | os.PathLike | None" = None, name: str = "n3net") -> list[Path]:
    """Parse and cross-check every config of the repository; returns the config paths checked."""
    repo = Path(repo)
    checked = []
    entries = [(name, "onnxruntime_onnx", "model.onnx", onnx_path, onnx_io)]
    if plan_path is not None:
        entries.append((f"{name}_trt", "tensorrt_plan", "model.plan", plan_path, plan_io))
    for model_name, platform, filename, source, reader in entries:
        cfg_path = repo / model_name / "config.pbtxt"
        if not cfg_path.is_file():
            raise TritonRepoError(f"{cfg_path}: missing")
        config = read_config(cfg_path)
        if config.name != model_name:
            raise TritonRepoError(f"{cfg_path}: name {config.name!r} differs from its folder {model_name!r}")
        model_file = repo / model_name / "1" / filename
        if not model_file.is_file():
            raise TritonRepoError(f"{model_file}: missing")
        if sha256_file(model_file) != sha256_file(source):
            raise TritonRepoError(f"{model_file}: differs from {source}")
        check_config(config, reader(source), platform=platform, where=str(cfg_path))
        checked.append(cfg_path)
    return checked


# ------------------------------------------------------------------ writing
def _external_files(onnx_path: Path) -> list[Path]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    files = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    files.add(onnx_path.parent / entry.value)
    return sorted(files)


def write_triton_repo(
    onnx_path: "str | os.PathLike", out: "str | os.PathLike", plan_path: "str | os.PathLike | None" = None,
    options: RepoOptions = RepoOptions(), *, overwrite: bool = False,
) -> list[Path]:
    """Write the repository (atomically: a temp folder renamed onto ``out``), validate it, and
    return the ``config.pbtxt`` paths. ``out`` must not exist unless ``overwrite``."""
    onnx_path, out = Path(onnx_path), Path(out)
    if not onnx_path.is_file():
        raise ModelFileError(f"{onnx_path}: no such ONNX file")
    if plan_path is not None and not Path(plan_path).is_file():
        raise ModelFileError(f"{plan_path}: no such TensorRT plan")
    if out.exists() and not overwrite:
        raise TritonRepoError(f"{out} exists; choose another folder or pass --force to replace it")
    io = onnx_io(onnx_path)
    if not any(-1 in t.dims for t in io.inputs):
        warnings.warn(StaticGraphMemoryWarning(
            f"{onnx_path.name} has no symbolic axis: Triton's onnxruntime backend (memory reuse always on) "
            "peaks about twice as high on it as on the same model exported with n3deploy's default batch axis "
            "(symbolic for a fixed size) or a dynamic size"
        ), stacklevel=2)
    configs = [(options.name, onnx_model_config(io, options), [(onnx_path, "model.onnx")] + [(f, f.name) for f in _external_files(onnx_path)])]
    if plan_path is not None:
        configs.append((f"{options.name}_trt", plan_model_config(plan_io(plan_path), options), [(Path(plan_path), "model.plan")]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for model_name, config, files in configs:
            version = tmp / model_name / "1"
            version.mkdir(parents=True)
            (tmp / model_name / "config.pbtxt").write_text(config_text(config))
            for src, dst in files:
                shutil.copyfile(src, version / dst)
        validate_triton_repo(tmp, onnx_path, plan_path, options.name)
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / name / "config.pbtxt" for name, _, _ in configs]
