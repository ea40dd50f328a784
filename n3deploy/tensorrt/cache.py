"""An engine cache directory: build a plan once per (model, TensorRT, GPU, precision, profile), then reuse it.

Layout: ``<dir>/<onnx stem>-<key[:16]>.plan`` plus its ``.plan.json`` metadata. The key hashes every
fact that makes a plan unusable elsewhere (vs-mlrt and ONNX Runtime's TensorRT provider key their
caches the same way): ONNX checksum, TensorRT release, GPU name and compute capability, precision,
profile shapes and builder optimisation level. Workspace size and timing cache only affect build
time, not which inputs an engine accepts, so they are not part of the key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..errors import EngineMismatchError, ModelFileError
from .env import RuntimeInfo, current_runtime_info
from .metadata import EngineMetadata, check_compatible, metadata_path, read_metadata
from .onnx_graph import onnx_fingerprint, read_onnx_graph
from .spec import EngineBuildSpec, resolve_spec

__all__ = ["CACHE_KEY_VERSION", "cache_key", "EngineCache", "BuildFn"]

log = logging.getLogger(__name__)

CACHE_KEY_VERSION = 1
BuildFn = Callable[[EngineBuildSpec, RuntimeInfo], EngineMetadata]


def cache_key(onnx_sha256: str, runtime: RuntimeInfo, spec: EngineBuildSpec) -> str:
    """Hex SHA-256 over the facts that decide whether a cached plan is usable (see module docstring)."""
    release = ".".join(str(runtime.tensorrt_version).split(".")[:3])
    fields = {
        "v": CACHE_KEY_VERSION,
        "onnx_sha256": onnx_sha256,
        "tensorrt": release,
        "gpu": runtime.gpu_name,
        "cc": runtime.compute_capability,
        "precision": spec.precision,
        "profile": None if spec.profile is None else spec.profile.to_dict(),
        "static": None if spec.static_input_shape is None else list(spec.static_input_shape),
        "opt_level": spec.builder_optimization_level,
        "strongly_typed": spec.strongly_typed,
    }
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _default_build(spec: EngineBuildSpec, runtime: RuntimeInfo) -> EngineMetadata:
    from .builder import build_engine  # noqa: PLC0415 - TensorRT code only when a build is needed

    return build_engine(spec, runtime=runtime)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so two processes do not build the same engine at once (POSIX; no-op elsewhere)."""
    try:
        import fcntl  # noqa: PLC0415
    except ImportError:  # Windows: atomic renames still keep the cache consistent
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class EngineCache:
    """A directory of plans keyed by :func:`cache_key`; :meth:`get_or_build` builds once and reuses.

    ``build`` (default: the TensorRT Python API builder) is called as ``build(spec, runtime)`` and must
    write ``spec.output_path`` and its metadata; ``runtime`` defaults to this machine's TensorRT and GPU.
    """

    def __init__(self, directory: str | os.PathLike, *, build: Optional[BuildFn] = None) -> None:
        self.directory = Path(directory)
        self._build = build or _default_build

    def plan_path(self, spec: EngineBuildSpec, key: str) -> Path:
        return self.directory / f"{spec.onnx_path.stem}-{key[:16]}.plan"

    def lookup(self, onnx_path: str | os.PathLike, runtime: RuntimeInfo, **spec_overrides: Any) -> tuple[Path, EngineBuildSpec, str]:
        """Where the plan for this model/runtime/options lives (whether or not it exists yet)."""
        onnx_path = Path(onnx_path)
        graph = read_onnx_graph(onnx_path)
        spec = resolve_spec(onnx_path, self.directory / "pending.plan", graph=graph, **spec_overrides)
        sha = onnx_fingerprint(onnx_path, graph)
        key = cache_key(sha, runtime, spec)
        plan = self.plan_path(spec, key)
        return plan, spec.replace(output_path=plan), sha

    def _usable(self, plan: Path, sha: str, runtime: RuntimeInfo) -> Optional[EngineMetadata]:
        if not plan.is_file() or not metadata_path(plan).is_file():
            return None
        try:
            meta = read_metadata(plan)
            check_compatible(meta, runtime)
        except (ModelFileError, EngineMismatchError) as exc:
            log.warning("ignoring cached engine %s: %s", plan, exc)
            return None
        if meta.onnx_sha256 != sha:
            log.warning("ignoring cached engine %s: built from another ONNX file", plan)
            return None
        return meta

    def get_or_build(self, onnx_path: str | os.PathLike, spec_overrides: Optional[dict[str, Any]] = None, *,
                     runtime: Optional[RuntimeInfo] = None) -> Path:
        """Path of a usable plan for ``onnx_path``, building (and caching) it first if needed.

        ``spec_overrides`` are :func:`resolve_spec` keywords (``min_shape``, ``opt_shape``, ``max_shape``,
        ``timing_cache``, ``workspace_gib``, ``builder_optimization_level``).
        """
        runtime = runtime or current_runtime_info()
        plan, spec, sha = self.lookup(onnx_path, runtime, **(spec_overrides or {}))
        if self._usable(plan, sha, runtime) is not None:
            log.info("engine cache hit: %s", plan)
            return plan
        with _file_lock(plan.with_name(plan.name + ".lock")):
            if self._usable(plan, sha, runtime) is not None:  # another process built it meanwhile
                return plan
            log.info("engine cache miss: building %s", plan)
            self._build(spec, runtime)
        if self._usable(plan, sha, runtime) is None:
            raise ModelFileError(f"building {plan} did not leave a usable plan and metadata behind")
        return plan

    def entries(self) -> list[EngineMetadata]:
        """Metadata of every readable plan in the cache."""
        found = []
        for plan in sorted(self.directory.glob("*.plan")):
            with contextlib.suppress(ModelFileError):
                found.append(read_metadata(plan))
        return found
