"""n3deploy checkpoints: one ``.safetensors`` file with weights, config and metadata.

The header's ``__metadata__`` holds ``format``, the :class:`N3NetConfig` as JSON and a JSON
object of free metadata (``sigma``, ``provenance``, training details, ...). Loading reads
tensors with safetensors, never unpickles anything. Writing is atomic: a temporary file in the
same directory renamed into place, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .config import N3NetConfig
from .errors import ModelFileError
from .fileio import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint_header", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "n3deploy-checkpoint-v1"


def save_checkpoint(model, path: str | os.PathLike, **metadata: Any) -> Path:
    """Write ``model``'s weights, config and ``metadata`` (JSON-serialisable) to ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    merged = {**getattr(model, "metadata", {}), **metadata}
    try:
        meta_json = json.dumps(merged, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {exc}") from None
    header = {"format": CHECKPOINT_FORMAT, "config": model.config.to_json(), "metadata": meta_json}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def read_checkpoint_header(path: str | os.PathLike) -> tuple[N3NetConfig, dict[str, Any]]:
    """Config and metadata of an n3deploy checkpoint, without loading weights or torch."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ModelFileError(f"{path}: not a readable .safetensors file ({exc})") from None
    if header.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(
            f"{path}: not an n3deploy checkpoint (format {header.get('format')!r}); "
            "official .t7 files are converted with `n3deploy convert-official`"
        )
    try:
        return N3NetConfig.from_json(header["config"]), json.loads(header.get("metadata", "{}"))
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: corrupt n3deploy checkpoint header ({exc})") from None


def load_checkpoint(path: str | os.PathLike, knn: str = "static"):
    """Load an n3deploy checkpoint as an eval-mode :class:`N3Net`; ``model.metadata`` holds its metadata."""
    from safetensors.torch import load_file

    from .model import N3Net

    config, metadata = read_checkpoint_header(path)
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise ModelFileError(f"{path}: cannot read weights (truncated file?): {exc}") from None
    model = N3Net(config, knn=knn)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelFileError(
            f"{path}: weights do not match its config: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    model.metadata = metadata
    return model.eval()
