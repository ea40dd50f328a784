"""Model configuration: one frozen dataclass with named presets (no dicts of strings)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["N3NetConfig", "PRESETS", "preset_names"]


@dataclass(frozen=True)
class N3NetConfig:
    """Hyper-parameters of an N3Net (Plötz & Roth, NeurIPS 2018) for image denoising.

    The network is ``num_dncnn`` DnCNN blocks with an N3 block between each pair::

        DnCNN(in -> interm) -> N3 -> DnCNN(interm*(k+1) -> interm) -> N3 -> ... -> DnCNN(-> out)

    Attributes mirror the authors' ``args.pkl`` names where they exist (``ndncnn``,
    ``nfeatures_interm``, ``nl_k``, ``nl_patchsize``, ``nl_stride``, ...).
    """

    in_channels: int = 1
    out_channels: int = 1
    num_dncnn: int = 3
    interm_channels: int = 8
    # DnCNN blocks: conv-ReLU, (depth-2) x conv-BN-ReLU, conv; residual inside each block.
    dncnn_features: int = 64
    dncnn_depth: int = 6
    kernel_size: int = 3
    # N3 blocks: embedding CNN and temperature CNN (same shape, 8 resp. 1 output planes).
    embed_features: int = 64
    embed_depth: int = 3
    embed_channels: int = 8
    # Continuous nearest-neighbour selection.
    k: int = 7
    patch_size: int = 10
    stride: int = 5
    window: int = 15
    temp_bias: float = 0.1

    def __post_init__(self) -> None:
        positive = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"N3NetConfig.{name} must be positive, got {value!r}")
        if self.num_dncnn < 2:
            raise ValueError("N3NetConfig.num_dncnn must be >= 2 (an N3 block sits between DnCNN blocks)")
        if self.patch_size != 2 * self.stride:
            raise ValueError(
                "n3deploy's static KNN folds patches as 2x2 blocks: patch_size must equal 2*stride "
                f"(got patch_size={self.patch_size}, stride={self.stride})"
            )
        if self.window % 2 != 1:
            raise ValueError(f"N3NetConfig.window must be odd, got {self.window}")
        if self.dncnn_depth < 2 or self.embed_depth < 2:
            raise ValueError("dncnn_depth and embed_depth must be >= 2")

    # ------------------------------------------------------------------ presets
    @classmethod
    def paper(cls, channels: int = 1) -> "N3NetConfig":
        """The authors' Gaussian-denoising hyper-parameters (3 DnCNN blocks of depth 6, k=7)."""
        return cls(in_channels=channels, out_channels=channels)

    @classmethod
    def tiny(cls, channels: int = 1) -> "N3NetConfig":
        """A small N3Net that trains on 2 CPU cores: same structure, narrower and shallower.

        3 DnCNN blocks (32 features, depth 5) and 2 N3 blocks (16-feature embedding, k=4).
        The search window is 7x7 patches (35 px of patch offsets) instead of 15x15: on CPU the
        continuous KNN, not the convolutions, dominates a training step, and its cost grows
        with window^2 (measured ~2-3x faster steps than window 15 at equal width).
        """
        return cls(
            in_channels=channels,
            out_channels=channels,
            dncnn_features=32,
            dncnn_depth=5,
            embed_features=16,
            embed_depth=3,
            k=4,
            window=7,
        )

    @classmethod
    def preset(cls, name: str, channels: int = 1) -> "N3NetConfig":
        """Look up a preset by name (a key of :data:`PRESETS`: ``tiny`` or ``paper``)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {preset_names()}")
        return PRESETS[name](channels)

    # ------------------------------------------------------------- properties
    @property
    def min_size(self) -> int:
        """Smallest height/width the model accepts (two patches along an axis after padding)."""
        return self.patch_size + self.stride

    @property
    def n3_channels(self) -> int:
        """Channels leaving an N3 block: ``interm * (k + 1)``."""
        return self.interm_channels * (self.k + 1)

    # --------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "N3NetConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown N3NetConfig fields: {unknown}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "N3NetConfig":
        return cls.from_dict(json.loads(text))


#: The preset registry: name -> ``channels -> N3NetConfig``. Model-registry entries
#: (:mod:`n3deploy.models`) name their architecture by these keys; ``train --preset`` offers them.
PRESETS: dict[str, Callable[[int], N3NetConfig]] = {"tiny": N3NetConfig.tiny, "paper": N3NetConfig.paper}


def preset_names() -> list[str]:
    """The preset names, in registry order (``tiny``, ``paper``)."""
    return list(PRESETS)
