"""The authors' pretrained checkpoints (visinf/n3net ``051_ckpt.t7``) -> :class:`N3Net`.

The files are legacy ``torch.save`` pickles of ``{'net': state_dict, 'epoch': N}``; they are
read with ``torch.load(weights_only=True)``, which never executes pickled code. The mapping is
strict: every key of the official layout must be present with its shape, nothing else may be.

Layout differences handled here (see ``official_n3net_state_dict.txt``):

* ``blocks.N.bn1.*`` exist in the checkpoints but the authors' forward never applies them:
  they are checked and dropped.
* ``nls.N.n3aggregation.aggregation.nnn.bn.*`` is our ``nls.N.aggregation.distance_bn.*``.
* the checkpoints have no ``num_batches_tracked`` buffers.
* about 180k weights are subnormal float32; they are flushed to zero (outputs unchanged, CPU
  convolutions up to ~100x faster).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import N3NetConfig
from .errors import ModelFileError
from .model import N3Net

__all__ = ["load_official", "official_state_dict_to_ours", "OFFICIAL_CONFIG"]

OFFICIAL_CONFIG = N3NetConfig.paper()
_DIST_BN_OFFICIAL = "n3aggregation.aggregation.nnn.bn."
_DIST_BN_OURS = "aggregation.distance_bn."


def _official_layout(config: N3NetConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official checkpoint layout for ``config``."""
    ours = N3Net(config).state_dict()
    layout: dict[str, tuple[int, ...]] = {}
    for key, value in ours.items():
        if key.endswith("num_batches_tracked"):
            continue
        layout[key.replace(_DIST_BN_OURS, _DIST_BN_OFFICIAL)] = tuple(value.shape)
    for n in range(config.num_dncnn):
        f = config.dncnn_features
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            layout[f"blocks.{n}.bn1.{suffix}"] = (f,)
    return layout


def official_state_dict_to_ours(state: dict[str, torch.Tensor], config: N3NetConfig = OFFICIAL_CONFIG) -> dict[str, torch.Tensor]:
    """Check ``state`` against the official layout and rename it to :class:`N3Net`'s keys.

    Raises :class:`ModelFileError` naming every missing, unexpected or mis-shaped key.
    """
    layout = _official_layout(config)
    missing = sorted(set(layout) - set(state))
    unexpected = sorted(set(state) - set(layout))
    wrong = sorted(
        f"{k}: {tuple(state[k].shape)} != {layout[k]}"
        for k in set(layout) & set(state)
        if not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != layout[k]
    )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if wrong:
            parts.append(f"wrong shapes {_short(wrong)}")
        raise ModelFileError("not an official N3Net denoising checkpoint: " + "; ".join(parts))
    ours: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".bn1." in key:
            continue
        value = value.detach().to(torch.float32)
        value = torch.where(value.abs() < torch.finfo(torch.float32).tiny, torch.zeros_like(value), value)
        ours[key.replace(_DIST_BN_OFFICIAL, _DIST_BN_OURS)] = value
    return ours


def _short(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)} in all)"


def load_official(path: str | os.PathLike, knn: str = "static") -> N3Net:
    """Load an official N3Net Gaussian-denoising checkpoint (``.t7``) as an eval-mode :class:`N3Net`."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such checkpoint file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many types on truncated/foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path}: cannot read as a torch checkpoint (truncated or not a checkpoint?): {first}") from None
    state = blob.get("net", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: expected a dict with a 'net' state dict, got {type(blob).__name__}")
    ours = official_state_dict_to_ours(state)
    model = N3Net(OFFICIAL_CONFIG, knn=knn)
    model_state = model.state_dict()
    for key in model_state:
        if key.endswith("num_batches_tracked"):
            ours[key] = torch.zeros_like(model_state[key])
    model.load_state_dict(ours, strict=True)
    return model.eval()
