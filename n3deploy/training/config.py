"""``TrainConfig``: every knob of ``n3deploy train`` in one dataclass, with its default."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import N3NetConfig

__all__ = ["TrainConfig", "learning_rate", "TRAIN_PRECISIONS"]

#: Precisions of the training forward pass (the names of :data:`n3deploy.precision.PRECISIONS`).
TRAIN_PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """Training recipe (defaults follow the authors where it fits: 80x80 crops, Adam 1e-3, MSE).

    Attributes:
        data: folder of clean training images.
        out: run folder (checkpoints, state, history, curve).
        val: folder of clean validation images (optional).
        val_split: hold out the last N training images (sorted) for validation instead.
        preset: model preset (``tiny`` or ``paper``).
        model_config: explicit model hyper-parameters (overrides ``preset``; used by tests
            and experiments with custom widths).
        channels: 1 (grayscale) or 3 (RGB).
        sigma: noise level on the 0-255 scale (also the validation noise level).
        sigma_range: ``(low, high)``: blind training, each patch draws sigma uniformly.
        steps: total optimisation steps of the run (the learning-rate schedule spans these).
        batch_size: patches per step *per process*.
        crop: square patch side.
        lr: peak learning rate. Schedule: linear warm-up over ``warmup_steps``, constant, then
            a cosine decay to ``lr * lr_final`` over the last ``decay_fraction`` of ``steps``
            (``decay_fraction=1``: plain cosine). Before the decay starts, ``--resume`` may
            change ``steps`` (extend or shorten a run) without changing the result.
        grad_clip: clip the global gradient norm to this (``None``: no clipping).
        val_every: validate and checkpoint every N steps (and at the end).
        val_crop: centre-crop validation images to at most this side (``None``: full images).
        seed: seeds the weights, the patches and the noise.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        threads: torch intra-op threads (``None``: torch's default, or cores / local ranks).
        stop_after: stop (resumably) after this many steps of *this invocation*.
        compile: wrap the model in ``torch.compile``.
        init_from: start from the weights of this n3deploy checkpoint (fine-tuning or a warm
            restart with a new schedule); its model config must equal this run's. The optimiser
            starts fresh.
        precision: ``fp32``, or ``bf16``: the training forward pass follows the precision plan
            (convolutions in bfloat16 under ``torch.autocast``, every KNN aggregation in float32);
            weights, gradients, optimiser state, loss and validation stay float32. Faster on CPUs
            with AVX512_BF16 / AMX and on GPUs.
    """

    data: Path
    out: Path
    val: Path | None = None
    val_split: int = 0
    preset: str = "tiny"
    model_config: N3NetConfig | None = None
    channels: int = 1
    sigma: float = 25.0
    sigma_range: tuple[float, float] | None = None
    steps: int = 2000
    batch_size: int = 16
    crop: int = 80
    lr: float = 1e-3
    lr_final: float = 0.01
    warmup_steps: int = 50
    decay_fraction: float = 0.4
    grad_clip: float | None = 1.0
    val_every: int = 200
    val_crop: int | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    stop_after: int | None = None
    compile: bool = False
    init_from: Path | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.out = Path(self.out)
        self.init_from = Path(self.init_from) if self.init_from is not None else None
        self.val = Path(self.val) if self.val is not None else None
        if self.sigma_range is not None:
            self.sigma_range = (float(self.sigma_range[0]), float(self.sigma_range[1]))
        if isinstance(self.model_config, dict):
            self.model_config = N3NetConfig.from_dict(self.model_config)
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "crop": self.crop >= 15,
            "lr": self.lr > 0,
            "lr_final": 0 < self.lr_final <= 1,
            "warmup_steps": self.warmup_steps >= 0,
            "decay_fraction": 0 < self.decay_fraction <= 1,
            "val_every": self.val_every >= 1,
            "val_split": self.val_split >= 0,
            "channels": self.channels in (1, 3),
            "sigma": self.sigma >= 0,
            "precision": self.precision in TRAIN_PRECISIONS,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{n}={getattr(self, n)!r}" for n in bad)
            raise ValueError(f"invalid training settings: {values}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"stop_after must be >= 1, got {self.stop_after}")
        if self.val is not None and self.val_split:
            raise ValueError("give either a validation folder or val_split, not both")

    @property
    def blind(self) -> bool:
        return self.sigma_range is not None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data"], d["out"] = str(self.data), str(self.out)
        d["val"] = str(self.val) if self.val is not None else None
        d["init_from"] = str(self.init_from) if self.init_from is not None else None
        d["sigma_range"] = list(self.sigma_range) if self.sigma_range is not None else None
        d["model_config"] = self.model_config.to_dict() if self.model_config is not None else None
        return d

    def build_model_config(self) -> N3NetConfig:
        """The model's hyper-parameters: ``model_config`` if given, else the preset's."""
        if self.model_config is not None:
            if self.model_config.in_channels != self.channels or self.model_config.out_channels != self.channels:
                raise ValueError(f"model_config has {self.model_config.in_channels} channels, training uses {self.channels}")
            return self.model_config
        return N3NetConfig.preset(self.preset, self.channels)

    # Settings that may differ between a run and its resumption without changing the result.
    # (``steps`` may also change, before the decay starts: see :func:`decay_start`.)
    RESUME_FREE = ("out", "stop_after", "threads", "device", "val_every", "compile")


def decay_start(cfg: TrainConfig) -> int:
    """First step of the final learning-rate decay (never before the warm-up ends)."""
    return max(cfg.warmup_steps, cfg.steps - int(round(cfg.decay_fraction * cfg.steps)))


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Learning rate for (0-based) ``step``: linear warm-up, constant, cosine to ``lr * lr_final``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    start = decay_start(cfg)
    if step < start:
        return cfg.lr
    t = min(1.0, (step - start) / max(1, cfg.steps - start))
    floor = cfg.lr * cfg.lr_final
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * t))
