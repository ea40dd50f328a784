"""The model files benchmark rows open, built once and cached across runs.

A row opens the random-weight model of the run's preset and seed as an n3deploy checkpoint or as an
exported ONNX graph (FP32 or the FP16 plan). Files are keyed by preset, seed, kind, schema and a
digest of the code they depend on (model, KNN, export), so a cached file is never reused after
that code changed. They are written by a worker process (:mod:`.worker`, task ``export``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from ..export.cache import default_cache_dir, source_digest
from .rows import get_row
from .settings import SCHEMA_VERSION, BenchSettings, RowInfo
from .worker import run_worker

__all__ = ["artifact_path", "build_artifacts", "ARTIFACT_KINDS"]

ARTIFACT_KINDS = ("checkpoint", "onnx-fp32", "onnx-fp16")


def artifact_path(settings: BenchSettings, kind: str) -> Path:
    """Where the cached file of ``kind`` (one of :data:`ARTIFACT_KINDS`) for ``settings`` lives."""
    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; choose from {ARTIFACT_KINDS}")
    key = hashlib.sha256(
        json.dumps([settings.preset, settings.seed, kind, SCHEMA_VERSION, source_digest()]).encode()
    ).hexdigest()[:16]
    folder = default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".safetensors" if kind == "checkpoint" else ".onnx"
    return folder / f"n3net-{settings.preset}-{kind}-{key}{suffix}"


def check_model(settings: BenchSettings) -> None:
    """Refuse a ``settings.model`` whose network is not the ``settings.preset`` network (the FLOP counts,
    the breakdown and the memory predictions all follow the preset)."""
    if settings.model is None:
        return
    from ..checkpoint import read_checkpoint_header
    from ..config import N3NetConfig
    from ..models import resolve_model

    config, _ = read_checkpoint_header(resolve_model(settings.model))
    if config.to_dict() != N3NetConfig.preset(settings.preset, config.in_channels).to_dict():
        raise ValueError(f"{settings.model} is not a '{settings.preset}' preset network: pass the --preset it was trained as")


def build_artifacts(settings: BenchSettings, infos: list[RowInfo], log: Callable[[str], None]) -> dict[str, str]:
    """Build (or reuse) every file the available rows open: ``{kind: path}``.

    With ``settings.model`` the rows open that checkpoint and its exports (the shared export cache,
    :func:`~n3deploy.export.cache.cached_export`); otherwise the random-weight model of the preset.
    A file that cannot be built marks the rows that need it unavailable, with the reason.
    """
    files: dict[str, str] = {}
    for info in infos:
        kind = get_row(info.name).opens
        if not info.available or kind in files:
            continue
        if settings.model is not None and kind == "checkpoint":
            from ..models import resolve_model

            files[kind] = str(resolve_model(settings.model))
            continue
        path = artifact_path(settings, kind)
        job = {"task": "export", "kind": kind, "preset": settings.preset, "seed": settings.seed,
               "path": str(path), "threads": settings.resolved_threads(), "model": settings.model}
        if settings.model is not None or not path.exists():  # a model's exports: the export cache decides
            log(f"building {kind} of {settings.model or path.name}")
            res = run_worker(job, settings.job_timeout_s)
            path = Path(res.get("path") or path)
            if not res["ok"] or not path.exists():
                for other in infos:
                    if get_row(other.name).opens == kind:
                        other.available, other.reason = False, f"building its {kind} file failed: {res.get('error')}"
                continue
        files[kind] = str(path)
    return files
