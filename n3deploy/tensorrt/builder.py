"""Build a TensorRT engine from an :class:`EngineBuildSpec` with the TensorRT Python API.

Runs only where TensorRT >= 10 and a CUDA GPU exist; elsewhere :func:`build_engine` raises
:class:`BackendUnavailableError` before touching anything. API calls and where they are documented
(TensorRT Python API reference, https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/):

* ``trt.Logger``, ``trt.Builder(logger)``                                         -- Core/Logger, Core/Builder
* ``builder.create_network(1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED))`` -- Core/Builder
  (TensorRT 10; in 11.x the flag is deprecated and ignored because every network is strongly typed,
  and the 10.x->11.x Python migration guide builds with ``builder.create_network()``)
* ``trt.OnnxParser(network, logger)``, ``parser.parse_from_file(path)``,
  ``parser.num_errors``, ``parser.get_error(i)``                                  -- Parsers/Onnx/pyOnnx
  (``parse_from_file`` lets the parser find external-data files next to the model)
* ``builder.create_builder_config()``, ``config.set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)``,
  ``config.builder_optimization_level``, ``config.create_timing_cache(bytes)``,
  ``config.set_timing_cache(cache, ignore_mismatch=False)``, ``config.get_timing_cache()``,
  ``config.add_optimization_profile(p)``                                          -- Core/BuilderConfig
* ``builder.create_optimization_profile()``, ``profile.set_shape(name, min, opt, max)`` -- Core/OptimizationProfile
* ``builder.build_serialized_network(network, config)`` -> ``IHostMemory`` or None  -- Core/Builder
* ``ITimingCache.serialize()``                                                    -- Core/TimingCache

No precision flags are set: ``BuilderFlag.FP16``/``OBEY_PRECISION_CONSTRAINTS`` and friends are
removed in TensorRT 11; the strongly typed network takes its precision from the ONNX graph.

Typed against NVIDIA's ``tensorrt-stubs`` (``tests/test_typecheck.py`` runs mypy with them): the
module is imported under its own name once :func:`~.env.import_tensorrt` has checked it, and every
TensorRT object carries its TensorRT type, so a misspelt call fails the type check.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..errors import EngineMismatchError, ModelFileError
from ..fileio import atomic_path
from .env import RuntimeInfo, current_runtime_info, import_tensorrt, tensorrt_major
from .metadata import EngineMetadata, metadata_path, write_metadata
from .onnx_graph import onnx_fingerprint, read_onnx_graph
from .shapes import dims_tuple
from .spec import EngineBuildSpec

if TYPE_CHECKING:
    import tensorrt

__all__ = ["EngineBuildError", "build_engine", "record_trtexec_plan"]

log = logging.getLogger(__name__)


class EngineBuildError(ModelFileError):
    """TensorRT could not parse the ONNX graph or build an engine from it."""


def _create_network(builder: "tensorrt.Builder") -> "tensorrt.INetworkDefinition":
    """A strongly typed network on TensorRT 10 and 11 alike."""
    import tensorrt as trt  # noqa: PLC0415 - checked by import_tensorrt before any builder exists

    if tensorrt_major(trt.__version__) >= 11:
        # TensorRT 11: "STRONGLY_TYPED: [DEPRECATED] ... Strongly typed mode is always enabled. This flag
        # is retained for API compatibility but is ignored." (Core/Builder, 11.0 reference)
        return builder.create_network(0)
    return builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))


def _parse_onnx(network: "tensorrt.INetworkDefinition", logger: "tensorrt.ILogger", onnx_path: Path) -> "tensorrt.OnnxParser":
    import tensorrt as trt  # noqa: PLC0415

    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(
            f"TensorRT's ONNX parser rejected {onnx_path}:\n  " + "\n  ".join(errors or ["(no error details)"])
            + "\nCheck the graph with `polygraphy inspect model` / `polygraphy check lint`; unsupported ops "
            "(e.g. Col2Im from F.fold) must be exported differently."
        )
    return parser  # the parser must outlive the network's use of its weights


def _check_network_io(network: "tensorrt.INetworkDefinition", spec: EngineBuildSpec) -> list[str]:
    """Check the parsed network's I/O against the spec; returns the output names."""
    import tensorrt as trt  # noqa: PLC0415

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    if [t.name for t in inputs] != [spec.input_name]:
        raise EngineBuildError(f"network inputs {[t.name for t in inputs]} differ from the ONNX graph's input {spec.input_name!r}")
    for tensor in inputs + outputs:
        if tensor.dtype != trt.DataType.FLOAT:
            raise EngineBuildError(
                f"network tensor {tensor.name!r} is {tensor.dtype}; n3deploy engines need float32 inputs and outputs"
            )
    shape = dims_tuple(inputs[0].shape)
    if any(d < 0 for d in shape) and spec.profile is None:
        raise EngineBuildError(f"TensorRT sees dynamic input dimensions {shape} but the spec has no profile")
    return [t.name for t in outputs]


def _load_timing_cache(config: "tensorrt.IBuilderConfig", path: Optional[Path]) -> "tensorrt.ITimingCache":
    """Attach the timing cache at ``path`` (or an empty one) to ``config``; a stale cache is replaced, not fatal."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache: "Optional[tensorrt.ITimingCache]" = None
    if data:
        try:
            cache = config.create_timing_cache(data)
            if cache is not None and not config.set_timing_cache(cache, ignore_mismatch=False):
                cache = None
        except Exception as exc:  # noqa: BLE001 - TensorRT raises RuntimeError/TypeError for foreign caches
            log.warning("timing cache %s not usable (%s)", path, exc)
            cache = None
        if cache is None:
            log.warning("timing cache %s is from another TensorRT version or GPU; starting an empty one", path)
        else:
            log.info("reusing timing cache %s (%d bytes)", path, len(data))
            return cache
    empty = config.create_timing_cache(b"")
    config.set_timing_cache(empty, ignore_mismatch=False)
    return empty


def _save_timing_cache(config: "tensorrt.IBuilderConfig", path: Optional[Path]) -> None:
    if path is None:
        return
    cache = config.get_timing_cache()
    if cache is None:
        return
    serialized = cache.serialize()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(serialized)  # IHostMemory supports the buffer protocol (TensorRT Python samples write it directly)


def _write_plan(serialized: "tensorrt.IHostMemory", output_path: Path) -> None:
    # Remove stale metadata first: a crash between the two writes must not pair an old .json with a new plan.
    with contextlib.suppress(FileNotFoundError):
        metadata_path(output_path).unlink()
    with atomic_path(output_path) as tmp, open(tmp, "wb") as f:
        f.write(serialized)


def build_engine(spec: EngineBuildSpec, *, device: int = 0, verbose: bool = False,
                 runtime: Optional[RuntimeInfo] = None) -> EngineMetadata:
    """Build ``spec.output_path`` (atomically) and its ``.json`` metadata; returns the metadata.

    Raises :class:`BackendUnavailableError` without TensorRT/GPU, :class:`EngineBuildError` if TensorRT
    rejects the graph or the build fails.
    """
    import_tensorrt("building a TensorRT engine")  # a clear error where TensorRT is missing
    import tensorrt as trt  # noqa: PLC0415 - importable now

    runtime = runtime or current_runtime_info(device)
    graph = read_onnx_graph(spec.onnx_path)
    onnx_sha = onnx_fingerprint(spec.onnx_path, graph)

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _create_network(builder)
    parser = _parse_onnx(network, logger, spec.onnx_path)
    output_names = _check_network_io(network, spec)

    config = builder.create_builder_config()
    if spec.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
    if spec.builder_optimization_level is not None:
        config.builder_optimization_level = spec.builder_optimization_level
    if spec.profile is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(spec.input_name, trt.Dims(list(spec.profile.min)), trt.Dims(list(spec.profile.opt)),
                          trt.Dims(list(spec.profile.max)))
        config.add_optimization_profile(profile)
    _load_timing_cache(config, spec.timing_cache)

    log.info("building TensorRT %s engine %s from %s", trt.__version__, spec.output_path, spec.onnx_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT failed to build an engine from {spec.onnx_path} (see the TensorRT log above; "
            "re-run with --verbose for details)"
        )
    _write_plan(serialized, spec.output_path)
    _save_timing_cache(config, spec.timing_cache)
    del parser

    meta = EngineMetadata.for_build(spec, runtime, onnx_sha256=onnx_sha, output_names=output_names,
                                    onnx_metadata=graph.metadata_props)
    write_metadata(meta, spec.output_path)
    return meta


def record_trtexec_plan(spec: EngineBuildSpec, *, device: int = 0) -> EngineMetadata:
    """Write metadata for a plan that ``trtexec`` built from ``spec`` (``--metadata-only``).

    Deserializes the plan with this machine's TensorRT first (``trt.Runtime(logger)
    .deserialize_cuda_engine(bytes)``, Core/Runtime) so only a plan that really loads here gets metadata.
    """
    import_tensorrt("recording metadata for a trtexec-built plan")
    import tensorrt as trt  # noqa: PLC0415 - importable now

    runtime = current_runtime_info(device)
    if not spec.output_path.is_file():
        raise ModelFileError(f"no plan at {spec.output_path}: run the trtexec command first (n3deploy build-engine --print-trtexec)")
    graph = read_onnx_graph(spec.onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(spec.output_path.read_bytes())
    if engine is None:
        raise EngineMismatchError(
            f"TensorRT {runtime.tensorrt_version} on {runtime.gpu_name} cannot deserialize {spec.output_path}: "
            f"it was built by another TensorRT version or for another GPU. Rebuild it here with: {spec.to_cli_command()}"
        )
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    if inputs != [spec.input_name]:
        raise EngineMismatchError(f"{spec.output_path} has inputs {inputs}, but {spec.onnx_path} has {spec.input_name!r}: not built from it")
    if spec.profile is not None:
        built = tuple(dims_tuple(s) for s in engine.get_tensor_profile_shape(spec.input_name, 0))
        if built != (spec.profile.min, spec.profile.opt, spec.profile.max):
            raise EngineMismatchError(
                f"{spec.output_path} was built with profile {built}, not the requested {spec.profile.describe()}; "
                "pass the same --min/--opt/--max-shape options as the trtexec build"
            )
    meta = EngineMetadata.for_build(spec, runtime, onnx_sha256=onnx_fingerprint(spec.onnx_path, graph),
                                    output_names=outputs, onnx_metadata=graph.metadata_props, built_with="trtexec")
    write_metadata(meta, spec.output_path)
    return meta
