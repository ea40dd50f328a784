"""Files shipped inside the package: the default denoising model and its model card.

``default_model_path()`` is what ``n3deploy demo`` and :class:`n3deploy.Denoiser` load when no
model is given: a tiny N3Net trained on BSD400 at sigma=25 (see ``docs/model_card.md``).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from ..errors import ModelFileError

__all__ = ["DEFAULT_MODEL_NAME", "default_model_path"]

#: File name of the embedded default model inside this package.
DEFAULT_MODEL_NAME = "n3net_tiny_sigma25.safetensors"


def default_model_path() -> Path:
    """Path of the shipped default model (an n3deploy ``.safetensors`` checkpoint, sigma=25).

    Raises:
        ModelFileError: the file is not in the installed package (a broken install, or a
            source checkout where it was never trained/copied in).
    """
    resource = importlib.resources.files(__package__).joinpath(DEFAULT_MODEL_NAME)
    path = Path(str(resource))
    if not resource.is_file() or not path.is_file():
        raise ModelFileError(
            f"the default model {DEFAULT_MODEL_NAME} is missing from {path.parent}; reinstall n3deploy, "
            "or pass a model explicitly (train one with `n3deploy train`, see docs/training.md)"
        )
    return path
