"""Models shipped inside the package (model cards: ``docs/model_card.md``).

* ``tiny-sigma25`` (the default): ``N3NetConfig.tiny()`` trained on BSD400 at sigma=25 on a 2-core
  CPU; what ``n3deploy demo`` and :class:`n3deploy.Denoiser` load when no model is given.
* ``paper-sigma25``: ``N3NetConfig.paper()`` (the authors' hyper-parameters) trained on BSD400 at
  sigma=25 on one H100 GPU; ~10x the compute per pixel for +0.05 dB on Set12 -- for GPUs.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from ..errors import ModelFileError

__all__ = ["SHIPPED_MODELS", "DEFAULT_MODEL", "DEFAULT_MODEL_NAME", "default_model_path", "shipped_model_path"]

#: Shipped model name -> file inside this package.
SHIPPED_MODELS = {
    "tiny-sigma25": "n3net_tiny_sigma25.safetensors",
    "paper-sigma25": "n3net_paper_sigma25.safetensors",
}
DEFAULT_MODEL = "tiny-sigma25"
#: File name of the embedded default model inside this package.
DEFAULT_MODEL_NAME = SHIPPED_MODELS[DEFAULT_MODEL]


def default_model_path() -> Path:
    """Path of the shipped default model (an n3deploy ``.safetensors`` checkpoint, sigma=25)."""
    return shipped_model_path(DEFAULT_MODEL)


def shipped_model_path(name: str) -> Path:
    """Path of a shipped model (a key of :data:`SHIPPED_MODELS`).

    Raises:
        ModelFileError: unknown name, or the file is not in the installed package (a broken
            install, or a source checkout where it was never trained/copied in).
    """
    if name not in SHIPPED_MODELS:
        raise ModelFileError(f"no shipped model {name!r}; shipped: {', '.join(SHIPPED_MODELS)}")
    filename = SHIPPED_MODELS[name]
    resource = importlib.resources.files(__package__).joinpath(filename)
    path = Path(str(resource))
    if not resource.is_file() or not path.is_file():
        raise ModelFileError(
            f"the shipped model {filename} is missing from {path.parent}; reinstall n3deploy, "
            "or pass a model explicitly (train one with `n3deploy train`, see docs/training.md)"
        )
    return path
