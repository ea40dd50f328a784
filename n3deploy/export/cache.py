"""Exports built once and reused: one cache for benchmarks, scenarios and anything else that
needs "the ONNX graph of this checkpoint" without caring when it was written.

A cached file is keyed by the checkpoint's bytes, the export options and a digest of the code an
export depends on (config, model, checkpoint, KNN, export), so it is never reused after that code
changed. Files are written atomically by :func:`~n3deploy.export.onnx_export.export_onnx`: a killed
export leaves nothing behind that a later call could mistake for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["source_digest", "default_cache_dir", "cached_export"]


def source_digest() -> str:
    """SHA-256 of the n3deploy sources an exported graph depends on."""
    root = Path(__file__).resolve().parents[1]
    files = sorted([root / "config.py", root / "model.py", root / "checkpoint.py", *(root / "knn").glob("*.py"),
                    *(root / "export").glob("*.py")])
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$N3DEPLOY_EXPORT_CACHE``, else ``<tempdir>/n3deploy-export-cache``."""
    env = os.environ.get("N3DEPLOY_EXPORT_CACHE")
    return Path(env) if env else Path(tempfile.gettempdir()) / "n3deploy-export-cache"


def cached_export(checkpoint: "str | os.PathLike", *, cache_dir: "str | os.PathLike | None" = None,
                  **options: Any) -> Path:
    """The ONNX export of ``checkpoint`` (a path or a registry name) with ``options`` (keyword
    arguments of :func:`~n3deploy.export.onnx_export.export_onnx`; default: the dynamic FP32 graph),
    exported on first use and reused afterwards. Returns the graph's path.

    ``verify`` (default ``False`` here) applies to the first export only: it checks the file once and
    does not change it, so it is not part of the key."""
    import inspect

    from ..models import resolve_model
    from .onnx_export import export_onnx

    path = Path(resolve_model(checkpoint))
    effective = {"verify": False, **options, "progress": False}  # the caches' default: no re-verification
    defaults = {k: p.default for k, p in inspect.signature(export_onnx).parameters.items()}
    # options equal to export_onnx's defaults do not change the file: leave them out of the key
    keyed = {k: v for k, v in effective.items() if k not in ("verify", "progress") and defaults.get(k) != v}
    key = hashlib.sha256(path.read_bytes())
    key.update(json.dumps(keyed, sort_keys=True, default=str).encode())
    key.update(source_digest().encode())
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{path.stem}-{key.hexdigest()[:16]}.onnx"
    if not out.exists():
        from ..checkpoint import load_checkpoint

        export_onnx(load_checkpoint(path), out, **effective)
    return out
