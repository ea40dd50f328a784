"""Training losses of ``n3deploy train``: plain MSE, or MSE weighted by each patch's noise level.

A blind model is trained on patches whose noise level ``sigma`` varies (e.g. uniform in
[0, 55]). Its error grows about linearly with ``sigma`` (a denoiser's output MSE at 15 / 25 / 50
is ≈ 2.6 sigma on the 0-255 scale), so under a plain MSE the high-noise patches dominate the
gradient: a σ = 50 patch pulls 3.5× as hard as a σ = 15 patch. What users compare is PSNR at
each level, and ``d PSNR = -10/ln(10) · d MSE / MSE``: weighting each patch by ``1/sigma``
(floored, so that near-clean patches cannot dominate as a per-patch PSNR loss lets them) gives
every noise level the same pull on the mean PSNR over levels.
"""

from __future__ import annotations

import torch

__all__ = ["LOSSES", "SIGMA_WEIGHT_FLOOR", "training_loss"]

#: Loss names of :class:`~n3deploy.training.config.TrainConfig.loss` / ``--loss``.
LOSSES = ("mse", "sigma-weighted")

#: Patches below this noise level (0-255 scale) weigh as much as one at this level.
SIGMA_WEIGHT_FLOOR = 5.0


def training_loss(denoised: torch.Tensor, clean: torch.Tensor, sigmas: torch.Tensor, loss: str) -> torch.Tensor:
    """Scalar training loss.

    Args:
        denoised: ``B×C×H×W`` network output (any float dtype; computed in float32).
        clean: ``B×C×H×W`` float32 targets.
        sigmas: ``B`` noise level of each patch, 0-255 scale.
        loss: ``mse`` (mean squared error over every pixel) or ``sigma-weighted`` (per-patch MSE
            averaged with weights ``1 / max(sigma, SIGMA_WEIGHT_FLOOR)``, normalised to sum 1).
    """
    if loss == "mse":
        return torch.nn.functional.mse_loss(denoised.float(), clean)
    if loss == "sigma-weighted":
        per_patch = (denoised.float() - clean).square().flatten(1).mean(dim=1)
        weights = 1.0 / sigmas.to(per_patch).clamp(min=SIGMA_WEIGHT_FLOOR)
        return (per_patch * weights).sum() / weights.sum()
    raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
