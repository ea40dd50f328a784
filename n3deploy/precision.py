"""The precision vocabulary and the reduced-precision plan: which parts of N3Net run in FP16/BF16
and which stay FP32.

The vocabulary (:data:`PRECISIONS`), used by every backend, command and report: ``fp32``;
``fp16``, the plan below in float16; ``bf16``, the same plan in bfloat16; ``fp64``, a numerical
yardstick. This module imports torch only inside the functions that build a PyTorch plan, so the
vocabulary and :func:`fp32_scopes`'s names are usable on torch-free deployment machines.

One plan, three executors:

* the **FP16 ONNX graph** (:func:`n3deploy.export.fp16.convert_to_mixed_fp16`) blocks the nodes
  whose module scope lies in :func:`fp32_scopes` from the FP16 conversion and puts explicit Casts
  around them;
* **PyTorch FP16 / BF16** (:func:`reduced_precision`, ``TorchBackend(precision="fp16"|"bf16")``)
  stores the same modules' parameters in FP32 and casts their inputs to FP32 and their output
  back to the reduced type;
* **OpenVINO BF16** (:mod:`n3deploy.backends.openvino_backend`) runs the convolutions outside the
  same scopes (recorded in the exported graph's metadata) in BF16 and everything else in FP32.

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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

__all__ = [
    "PRECISIONS", "REDUCED_PRECISIONS", "check_precision", "normalize_precision", "fp32_scopes",
    "fold_batchnorms", "reduced_precision", "mixed_fp16", "mixed_bf16",
]

#: The precision names every backend, command and report uses: float32; the reduced-precision
#: plan in float16 or in bfloat16 (convolutions reduced, the non-local part FP32); float64 (a
#: numerical yardstick: how far float32 itself is from exact on a model).
PRECISIONS = ("fp32", "fp16", "bf16", "fp64")
#: The precisions that follow the plan (reduced convolutions, FP32 KNN).
REDUCED_PRECISIONS = ("fp16", "bf16")
# Names written by earlier n3deploy versions (ONNX metadata of FP16 graphs).
_LEGACY = {"mixed-fp16": "fp16"}


def normalize_precision(name: str) -> str:
    """``name`` in the vocabulary of :data:`PRECISIONS` (reads the legacy ``mixed-fp16`` as ``fp16``)."""
    return _LEGACY.get(name, name)


def check_precision(name: str, allowed: tuple[str, ...], what: str) -> str:
    """``name`` if ``what`` (a backend) supports it, else :class:`BackendUnavailableError` listing ``allowed``."""
    from .errors import BackendUnavailableError

    name = normalize_precision(name)
    if name not in allowed:
        raise BackendUnavailableError(f"unknown precision {name!r} for the {what}: use {', '.join(allowed)}")
    return name


def fp32_scopes(model: nn.Module) -> tuple[str, ...]:
    """Module paths kept in FP32 (the KNN aggregations), e.g. ``("nls.0.aggregation", ...)``."""
    from .model import KNNAggregation

    return tuple(name for name, module in model.named_modules() if isinstance(module, KNNAggregation))


def _cast_args(dtype: torch.dtype, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: floating-point tensor arguments to ``dtype``."""
    from torch import Tensor

    return tuple(a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)


def _cast_output(dtype: torch.dtype, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
    """Forward hook: the output to ``dtype``."""
    return output.to(dtype)


def fold_batchnorms(model: nn.Module) -> int:
    """Fold every eval-mode ``BatchNorm2d`` that follows a ``Conv2d`` in an ``nn.Sequential`` into it.

    In place (the batch-norm becomes ``nn.Identity``, so module names keep their indices);
    returns how many were folded. Inference only: the folded model no longer updates statistics.
    """
    from torch import nn
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


def reduced_precision(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` (an :class:`~n3deploy.model.N3Net`) under the plan in ``dtype``
    (``torch.float16`` or ``torch.bfloat16``).

    ``forward``: ``B x C x H x W`` float32 -> ``B x C x H x W`` float32, like the original; inside,
    everything outside :func:`fp32_scopes` computes in ``dtype``. Module names are unchanged, so the
    copy reads like the original (``copy.nls[0].aggregation`` is the FP32 island). FP16 is meant
    for CUDA (on CPU PyTorch's FP16 convolutions are correct but slow); BF16 runs fast on CPUs
    with AVX512_BF16 / AMX.
    """
    import torch

    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"the plan reduces to float16 or bfloat16, not {dtype}")
    scopes = fp32_scopes(model)
    if not scopes:
        raise ValueError(f"{type(model).__name__} has no KNN aggregation: nothing for the {dtype} plan to keep in FP32")
    mixed = copy.deepcopy(model).eval()
    fold_batchnorms(mixed)
    # The islands' parameters are kept as they are, never rounded through the reduced type: the
    # running variance of the batch-norm on distances is often above FP16's range (80,000 in the
    # shipped model) and would come back as inf.
    islands = {name: copy.deepcopy(mixed.get_submodule(name)) for name in scopes}  # .to() works in place
    mixed.to(dtype)
    for name, original in islands.items():
        mixed.set_submodule(name, original.float())
    for name in scopes:  # FP32 islands: reduced in, FP32 inside, reduced out
        island = mixed.get_submodule(name)
        island.register_forward_pre_hook(functools.partial(_cast_args, torch.float32))
        island.register_forward_hook(functools.partial(_cast_output, dtype))
    mixed.register_forward_pre_hook(functools.partial(_cast_args, dtype))  # FP32 input and output
    mixed.register_forward_hook(functools.partial(_cast_output, torch.float32))
    return mixed


def mixed_fp16(model: nn.Module) -> nn.Module:
    """:func:`reduced_precision` in float16 (the FP16 graph's partition, for PyTorch on CUDA)."""
    import torch

    return reduced_precision(model, torch.float16)


def mixed_bf16(model: nn.Module) -> nn.Module:
    """:func:`reduced_precision` in bfloat16 (fast on CPUs with AVX512_BF16 / AMX)."""
    import torch

    return reduced_precision(model, torch.bfloat16)
