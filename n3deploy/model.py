"""N3Net: DnCNN blocks interleaved with N3 (neural nearest neighbours) blocks.

Module names follow the authors' checkpoint layout (``blocks.N.conv1``, ``blocks.N.layer1``,
``nls.N.embedcnn``, ...) so that their weights map one-to-one (see :mod:`n3deploy.official`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import N3NetConfig
from .knn import get_knn

__all__ = ["N3Net", "DnCNNBlock", "N3Block", "KNNAggregation"]


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DnCNNBlock(nn.Module):
    """conv(+bias)-ReLU, (depth-2) x conv-BN-ReLU, conv(+bias); input added to the first channels.

    ``forward``: ``B x cin x H x W -> B x cout x H x W``; the residual adds the input's first
    ``min(cin, cout)`` channels to the output's first ``min(cin, cout)`` channels.
    """

    def __init__(self, cin: int, cout: int, features: int, depth: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, features, kernel, padding=kernel // 2)
        self.relu = nn.ReLU(inplace=True)
        layers: list[nn.Module] = []
        for _ in range(depth - 2):
            layers += _conv_bn_relu(features, features, kernel)
        self.layer1 = nn.Sequential(*layers)
        self.conv2 = nn.Conv2d(features, cout, kernel, padding=kernel // 2)
        self.residual_channels = min(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.layer1(self.relu(self.conv1(x))))
        r = self.residual_channels
        if r == y.shape[1]:
            return y + x[:, :r]
        return torch.cat([y[:, :r] + x[:, :r], y[:, r:]], dim=1)


def _small_cnn(cin: int, cout: int, features: int, depth: int, kernel: int) -> nn.Sequential:
    """The embedding / temperature CNN: (depth-1) x conv-BN-ReLU, then conv(+bias)."""
    layers: list[nn.Module] = []
    c = cin
    for _ in range(depth - 1):
        layers += _conv_bn_relu(c, features, kernel)
        c = features
    layers.append(nn.Conv2d(c, cout, kernel, padding=kernel // 2))
    return nn.Sequential(*layers)


class KNNAggregation(nn.Module):
    """The non-local part of an N3 block: patch distances, continuous k-NN weights, aggregation.

    ``forward(x, embed, log_temp)``: ``B x C x H x W``, ``B x E x H x W``, ``B x 1 x H x W``
    -> ``B x (k*C) x H x W`` (neighbour images ``z_1..z_k``). ``impl`` selects the
    implementation (``static`` or ``reference``, see :mod:`n3deploy.knn`).
    """

    def __init__(self, config: N3NetConfig, impl: str = "static") -> None:
        super().__init__()
        get_knn(impl)
        self.impl = impl
        self.distance_bn = nn.BatchNorm1d(1)
        self.options = dict(
            k=config.k, patch_size=config.patch_size, stride=config.stride, window=config.window,
            temp_bias=config.temp_bias,
        )

    def forward(self, x: Tensor, embed: Tensor, log_temp: Tensor) -> Tensor:
        knn = get_knn(self.impl)
        if torch.is_autocast_enabled(x.device.type):  # the precision plan: never a reduced-precision KNN
            with torch.autocast(x.device.type, enabled=False):
                return knn(x.float(), embed.float(), log_temp.float(), self.distance_bn, **self.options)
        return knn(x, embed, log_temp, self.distance_bn, **self.options)


class N3Block(nn.Module):
    """Neural nearest neighbours block: ``B x C x H x W -> B x C*(k+1) x H x W``.

    Output is ``cat[y, z_1 - y, ..., z_k - y]`` where ``z_r`` are the continuous
    r-th nearest neighbour images (patches aggregated and folded back).
    """

    def __init__(self, channels: int, config: N3NetConfig, knn: str = "static") -> None:
        super().__init__()
        cfg = config
        self.embedcnn = _small_cnn(channels, cfg.embed_channels, cfg.embed_features, cfg.embed_depth, cfg.kernel_size)
        self.tempcnn = _small_cnn(channels, 1, cfg.embed_features, cfg.embed_depth, cfg.kernel_size)
        self.aggregation = KNNAggregation(cfg, knn)
        self.k = cfg.k

    def forward(self, y: Tensor) -> Tensor:
        embed = self.embedcnn(y)
        log_temp = self.tempcnn(y)
        z = self.aggregation(y, embed, log_temp)
        b, c, h, w = y.shape
        diff = z.reshape(b, self.k, c, h, w) - y[:, None]
        return torch.cat([y, diff.reshape(b, self.k * c, h, w)], dim=1)


class N3Net(nn.Module):
    """The N3Net denoiser.

    ``forward(noisy)``: ``B x C x H x W`` float in [0, 1] -> ``B x C x H x W`` denoised estimate
    (no clipping). ``H`` and ``W`` must be at least ``config.min_size`` (15 px); any other
    size works (see :mod:`n3deploy.knn.common` for the window rule on small grids).
    """

    def __init__(self, config: N3NetConfig | None = None, knn: str = "static") -> None:
        super().__init__()
        self.config = cfg = config or N3NetConfig.paper()
        get_knn(knn)  # validate early
        blocks, nls = [], []
        cin = cfg.in_channels
        for n in range(cfg.num_dncnn):
            last = n == cfg.num_dncnn - 1
            cout = cfg.out_channels if last else cfg.interm_channels
            blocks.append(DnCNNBlock(cin, cout, cfg.dncnn_features, cfg.dncnn_depth, cfg.kernel_size))
            if not last:
                nls.append(N3Block(cfg.interm_channels, cfg, knn))
                cin = cfg.n3_channels
        self.blocks = nn.ModuleList(blocks)
        self.nls = nn.ModuleList(nls)

    @property
    def knn(self) -> str:
        return self.nls[0].aggregation.impl

    def set_knn(self, name: str) -> "N3Net":
        """Switch every N3 block to the KNN implementation ``name``; returns ``self``."""
        get_knn(name)
        for block in self.nls:
            block.aggregation.impl = name
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"N3Net expects B x {self.config.in_channels} x H x W input, got shape {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        m = self.config.min_size
        torch._check(h >= m, lambda: f"N3Net needs height >= {m}, got {h}")
        torch._check(w >= m, lambda: f"N3Net needs width >= {m}, got {w}")
        for n, block in enumerate(self.blocks):
            x = block(x)
            if n < len(self.nls):
                x = self.nls[n](x)
        return x
