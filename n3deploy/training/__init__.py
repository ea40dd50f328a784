"""Training N3Net denoisers: data sampling, the training loop, data-parallel helpers.

``from n3deploy.training import TrainConfig, train`` (torch is imported on first use of
``train``; :mod:`.data` and :mod:`.config` need only numpy/Pillow).
"""

from __future__ import annotations

from typing import Any

from .config import TrainConfig, learning_rate

__all__ = ["TrainConfig", "learning_rate", "train"]


def train(*args: Any, **kwargs: Any):
    """See :func:`n3deploy.training.trainer.train`."""
    from .trainer import train as _train

    return _train(*args, **kwargs)
