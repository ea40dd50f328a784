"""The FP16 precision plan: which parts of N3Net run in FP16 and which stay FP32.

One plan, two executors:

* the **FP16 ONNX graph** (:func:`n3deploy.export.fp16.convert_to_mixed_fp16`) blocks the nodes
  whose module scope lies in :func:`fp32_scopes` from the FP16 conversion and puts explicit Casts
  around them;
* **PyTorch FP16** (:func:`mixed_fp16`, ``TorchBackend(precision="fp16")``) stores the same
  modules' parameters in FP32 and casts their inputs to FP32 and their output back to FP16.

The plan: convolutions (with their batch-norms folded in, as the exported graph's simplifier and
TensorRT do: an unfolded FP16 batch-norm would subtract a rounded mean from a rounded activation
and divide the error by a small standard deviation), ReLUs, residual adds, the ``z - y``
differences and the concatenations run in FP16; the whole non-local part of every N3 block
(:class:`~n3deploy.model.KNNAggregation`: padding, patch distances, the batch-norm on distances,
the temperature division, the softmax / log(1-exp) selection rounds, the weighted aggregation and
the fold) runs in FP32. Input and output are FP32.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PRECISIONS", "fp32_scopes", "fold_batchnorms", "mixed_fp16"]

#: What :class:`~n3deploy.backends.torch_backend.TorchBackend` runs: float32, the FP16 plan, or
#: float64 (a numerical yardstick: how far float32 itself is from exact on a model).
PRECISIONS = ("fp32", "fp16", "fp64")


def fp32_scopes(model: nn.Module) -> tuple[str, ...]:
    """Module paths kept in FP32 (the KNN aggregations), e.g. ``("nls.0.aggregation", ...)``."""
    from .model import KNNAggregation

    return tuple(name for name, module in model.named_modules() if isinstance(module, KNNAggregation))


def _cast_args(dtype: torch.dtype, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: floating-point tensor arguments to ``dtype``."""
    return tuple(a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)


def _cast_output(dtype: torch.dtype, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
    """Forward hook: the output to ``dtype``."""
    return output.to(dtype)


def fold_batchnorms(model: nn.Module) -> int:
    """Fold every eval-mode ``BatchNorm2d`` that follows a ``Conv2d`` in an ``nn.Sequential`` into it.

    In place (the batch-norm becomes ``nn.Identity``, so module names keep their indices);
    returns how many were folded. Inference only: the folded model no longer updates statistics.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(1, len(seq)):
            conv, bn = seq[i - 1], seq[i]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i - 1] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                seq[i] = nn.Identity()
                folded += 1
    return folded


def mixed_fp16(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (an :class:`~n3deploy.model.N3Net`) under the FP16 precision plan.

    ``forward``: ``B x C x H x W`` float32 -> ``B x C x H x W`` float32, like the original; inside,
    everything outside :func:`fp32_scopes` computes in FP16. Module names are unchanged, so the
    copy reads like the original (``copy.nls[0].aggregation`` is the FP32 island). Meant for CUDA;
    on CPU PyTorch's FP16 convolutions are correct but slow.
    """
    scopes = fp32_scopes(model)
    if not scopes:
        raise ValueError(f"{type(model).__name__} has no KNN aggregation: nothing for the FP16 plan to keep in FP32")
    mixed = copy.deepcopy(model).eval()
    fold_batchnorms(mixed)
    # The islands' parameters are kept as they are, never rounded through FP16: the running
    # variance of the batch-norm on distances is often above FP16's range (80,000 in the shipped
    # model) and would come back as inf.
    islands = {name: copy.deepcopy(mixed.get_submodule(name)) for name in scopes}  # half() works in place
    mixed.half()
    for name, original in islands.items():
        mixed.set_submodule(name, original.float())
    for name in scopes:  # FP32 islands: FP16 in, FP32 inside, FP16 out
        island = mixed.get_submodule(name)
        island.register_forward_pre_hook(functools.partial(_cast_args, torch.float32))
        island.register_forward_hook(functools.partial(_cast_output, torch.float16))
    mixed.register_forward_pre_hook(functools.partial(_cast_args, torch.float16))  # FP32 input and output
    mixed.register_forward_hook(functools.partial(_cast_output, torch.float32))
    return mixed
