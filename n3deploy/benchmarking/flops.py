"""Analytic FLOP count of an N3Net forward pass, per input pixel.

One multiply-add is 2 FLOPs. Batch-norm is folded into the convolutions at inference (as ONNX
Runtime and TensorRT do), ReLUs, residual adds and padding are not counted (each is < 0.1% of
the total for the paper preset).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..config import N3NetConfig

__all__ = ["FlopCount", "model_flops_per_pixel", "conv_flops_per_pixel", "SOFTMAX_ROUND_FLOPS"]

# Elementwise FLOPs per (patch, candidate, round) of the continuous selection: the floor
# (max, sub, max), log-softmax (sub, exp, sum, log, sub), exp, and log(1-exp(w)) plus the update
# (PyTorch: max, eq, clamp, neg, log1p, where, add; exported: mul, tanh, add, mul, max, log, add).
# Transcendentals count as 1.
SOFTMAX_ROUND_FLOPS = 16


@dataclass(frozen=True)
class FlopCount:
    """FLOPs per input pixel, by part; ``total`` is their sum."""

    dncnn: float
    embed_temp: float
    knn_distance: float
    knn_selection: float
    knn_aggregation: float

    @property
    def conv(self) -> float:
        return self.dncnn + self.embed_temp

    @property
    def knn(self) -> float:
        return self.knn_distance + self.knn_selection + self.knn_aggregation

    @property
    def total(self) -> float:
        return self.conv + self.knn

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "conv": self.conv, "knn": self.knn, "total": self.total}


def conv_flops_per_pixel(cin: int, cout: int, kernel: int, bias: bool = False) -> float:
    """``2 * cin * cout * kernel^2`` (+ ``cout`` bias adds) per output pixel of a same-size conv."""
    return 2.0 * cin * cout * kernel * kernel + (cout if bias else 0)


def _small_cnn_flops(cin: int, cout: int, features: int, depth: int, kernel: int) -> float:
    flops, c = 0.0, cin
    for _ in range(depth - 1):
        flops += conv_flops_per_pixel(c, features, kernel, bias=True)  # BN folded into a bias
        c = features
    return flops + conv_flops_per_pixel(c, cout, kernel, bias=True)


def model_flops_per_pixel(config: N3NetConfig) -> FlopCount:
    """FLOPs per input pixel of ``N3Net(config)`` in the paper's (implementation-free) formulation.

    With ``K`` = kernel, ``F`` = dncnn_features, ``d`` = dncnn_depth, ``c`` = interm_channels,
    ``c' = c*(k+1)`` (N3 output), ``G`` = embed_features, ``e`` = embed_depth, ``E`` =
    embed_channels, ``p`` = patch_size, ``s`` = stride, ``W`` = window, ``k`` = neighbours::

        conv(a, b)  = 2*a*b*K^2 + b                      (BN folded into a bias)
        DnCNN(a, b) = conv(a, F) + (d-2)*conv(F, F) + conv(F, b)
        dncnn       = DnCNN(in, c) + (n-2)*DnCNN(c', c) + DnCNN(c', out)        (n = num_dncnn)
        embed_temp  = (n-1) * [conv(c, G) + (e-2)*conv(G, G) + conv(G, E)      (embedding CNN)
                               + conv(c, G) + (e-2)*conv(G, G) + conv(G, 1)]   (temperature CNN)
        per N3 block, per patch (1/s^2 patches per pixel), W^2 window candidates:
          knn_distance    = 2 * W^2 * E*p^2             (patch dot products; norms are O(E*p^2))
          knn_selection   = 16 * k * W^2                (k softmax rounds, SOFTMAX_ROUND_FLOPS)
          knn_aggregation = 2 * k * W^2 * c*p^2         (k weighted sums of W^2 patches)
        each multiplied by (n-1)/s^2.

    Paper preset (1 channel): 1.05 MFLOP DnCNN + 0.35 MFLOP embedding/temperature CNNs +
    0.23 MFLOP non-local = about 1.64 MFLOP per pixel. The ``static`` KNN folds the patch
    overlap into the weights and does fewer aggregation multiply-adds than this count
    (``2*k*(W+1)^2*c*s^2`` per block); achieved GFLOP/s are quoted against this model count.
    """
    c = config
    kk = c.kernel_size
    n3 = c.num_dncnn - 1

    def dncnn_block(cin: int, cout: int) -> float:
        return (
            conv_flops_per_pixel(cin, c.dncnn_features, kk, bias=True)
            + (c.dncnn_depth - 2) * conv_flops_per_pixel(c.dncnn_features, c.dncnn_features, kk, bias=True)
            + conv_flops_per_pixel(c.dncnn_features, cout, kk, bias=True)
        )

    dncnn = dncnn_block(c.in_channels, c.interm_channels)
    dncnn += (c.num_dncnn - 2) * dncnn_block(c.n3_channels, c.interm_channels)
    dncnn += dncnn_block(c.n3_channels, c.out_channels)
    embed_temp = n3 * (
        _small_cnn_flops(c.interm_channels, c.embed_channels, c.embed_features, c.embed_depth, kk)
        + _small_cnn_flops(c.interm_channels, 1, c.embed_features, c.embed_depth, kk)
    )
    patches_per_pixel = n3 / (c.stride * c.stride)
    w2 = c.window * c.window
    p2 = c.patch_size * c.patch_size
    return FlopCount(
        dncnn=dncnn,
        embed_temp=embed_temp,
        knn_distance=patches_per_pixel * 2.0 * w2 * c.embed_channels * p2,
        knn_selection=patches_per_pixel * SOFTMAX_ROUND_FLOPS * c.k * w2,
        knn_aggregation=patches_per_pixel * 2.0 * c.k * w2 * c.interm_channels * p2,
    )
