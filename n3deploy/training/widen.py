"""Function-preserving widening of a trained N3Net's DnCNN blocks (Net2WiderNet).

Chen, Goodfellow & Shlens, "Net2Net: accelerating learning via knowledge transfer", ICLR 2016:
a layer gets more feature channels by copying existing ones; the next layer splits each copied
channel's outgoing weights between the copies, so the network computes the same function and
training continues from the narrow model's quality with more capacity. Used by
``n3deploy train --init-from`` when the checkpoint's model differs from the run's only in
``dncnn_features`` (narrower). The N3 blocks (embedding and temperature CNNs, KNN) are copied
unchanged.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..config import N3NetConfig
from ..model import DnCNNBlock, N3Net

__all__ = ["widen_dncnn", "can_widen"]


def can_widen(narrow: N3NetConfig, wide: N3NetConfig) -> bool:
    """True when ``wide`` equals ``narrow`` but for more (or equal) ``dncnn_features``."""
    return (
        wide.dncnn_features >= narrow.dncnn_features
        and dataclasses.replace(narrow, dncnn_features=wide.dncnn_features) == wide
    )


def _mapping(old: int, new: int, gen: torch.Generator) -> Tensor:
    """``new`` source indices: ``0..old-1`` then ``new - old`` random copies of them."""
    extra = torch.randint(0, old, (new - old,), generator=gen)
    return torch.cat([torch.arange(old), extra])


def _split(mapping: Tensor, old: int, gen: torch.Generator) -> Tensor:
    """Per new channel, its share of the source channel's outgoing weights (shares of one source
    sum to 1). Random, not equal, shares: copies with equal outgoing weights would get equal
    gradients and stay copies for ever."""
    raw = 1.0 + 0.5 * torch.rand(len(mapping), generator=gen)
    total = torch.zeros(old).index_add_(0, mapping, raw)
    return raw / total[mapping]


@torch.no_grad()
def _widen_block(old: DnCNNBlock, new: DnCNNBlock, gen: torch.Generator) -> None:
    f_old, f_new = old.conv1.out_channels, new.conv1.out_channels
    mapping = _mapping(f_old, f_new, gen)
    new.conv1.weight.copy_(old.conv1.weight[mapping])
    new.conv1.bias.copy_(old.conv1.bias[mapping])
    olds, news = list(old.layer1), list(new.layer1)
    for i in range(0, len(olds), 3):  # conv (no bias), batch-norm, ReLU
        conv_o, bn_o, conv_n, bn_n = olds[i], olds[i + 1], news[i], news[i + 1]
        share = _split(mapping, f_old, gen)
        out_map = _mapping(f_old, f_new, gen)
        conv_n.weight.copy_(conv_o.weight[out_map][:, mapping] * share[None, :, None, None])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn_n, name).copy_(getattr(bn_o, name)[out_map])
        bn_n.num_batches_tracked.copy_(bn_o.num_batches_tracked)
        mapping = out_map
    share = _split(mapping, f_old, gen)
    new.conv2.weight.copy_(old.conv2.weight[:, mapping] * share[None, :, None, None])
    new.conv2.bias.copy_(old.conv2.bias)


def widen_dncnn(model: N3Net, dncnn_features: int, seed: int = 0) -> N3Net:
    """A copy of ``model`` whose DnCNN blocks have ``dncnn_features`` channels, same function.

    Each DnCNN block's hidden layers gain ``dncnn_features - model.config.dncnn_features``
    channels copied from randomly chosen existing ones (with their batch-norm parameters and
    statistics); every following layer splits a copied channel's weights between its copies in
    random shares that sum to one, so ``widen_dncnn(m, F)(x) == m(x)`` up to float rounding
    (in eval and in training mode: a copy has its source's batch statistics).

    Args:
        model: the narrow ``N3Net``.
        dncnn_features: the new width (``>=`` the old one).
        seed: seeds the choice of copied channels and the shares.

    Returns:
        a new ``N3Net`` (same KNN implementation, in the mode ``model`` is in).
    """
    old_cfg = model.config
    if dncnn_features < old_cfg.dncnn_features:
        raise ValueError(f"cannot widen {old_cfg.dncnn_features} DnCNN features to fewer ({dncnn_features})")
    wide = N3Net(dataclasses.replace(old_cfg, dncnn_features=dncnn_features), knn=model.knn)
    wide.nls.load_state_dict(model.nls.state_dict())
    gen = torch.Generator().manual_seed(seed)
    for old_block, new_block in zip(model.blocks, wide.blocks):
        _widen_block(old_block, new_block, gen)
    return wide.train(model.training)


