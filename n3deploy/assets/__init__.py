"""Models shipped inside the package: a view of the model registry (:mod:`n3deploy.models`).

The entries, their model-card figures and the default model's name are in ``models.json`` next to
the files (model cards: ``docs/model_card.md``); ``n3deploy models`` lists them.

* ``tiny-sigma25``: ``N3NetConfig.tiny()`` trained on BSD400 at sigma=25 on a 2-core CPU.
* ``paper-sigma25``: ``N3NetConfig.paper()`` (the authors' hyper-parameters) trained on BSD400 at
  sigma=25 on one H100 GPU; ~10x the compute per pixel for +0.05 dB on Set12 -- for GPUs.
* ``tiny-blind`` (the default): ``N3NetConfig.tiny()`` with 48-feature DnCNN blocks, trained
  with sigma drawn from [0, 55] per crop, for images whose noise level is unknown.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelFileError
from ..models import default_model_name, get_model, list_models

__all__ = ["SHIPPED_MODELS", "DEFAULT_MODEL", "DEFAULT_MODEL_NAME", "default_model_path", "shipped_model_path"]

#: Shipped model name -> file inside this package (the registry's shipped entries).
SHIPPED_MODELS = {entry.name: entry.file for entry in list_models(shipped_only=True)}
#: Name of the model used when none is given.
DEFAULT_MODEL = default_model_name()
#: File name of the default model inside this package.
DEFAULT_MODEL_NAME = SHIPPED_MODELS[DEFAULT_MODEL]


def default_model_path() -> Path:
    """Path of the shipped default model (an n3deploy ``.safetensors`` checkpoint)."""
    return shipped_model_path(DEFAULT_MODEL)


def shipped_model_path(name: str) -> Path:
    """Path of a shipped model (a key of :data:`SHIPPED_MODELS`).

    Raises:
        ModelFileError: unknown name, or the file is not in the installed package (a broken
            install, or a source checkout where it was never trained/copied in).
    """
    if name not in SHIPPED_MODELS:
        raise ModelFileError(f"no shipped model {name!r}; shipped: {', '.join(SHIPPED_MODELS)}")
    return get_model(name).resolve()
