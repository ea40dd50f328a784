"""The exceptions n3deploy raises on bad input: each says what was wrong and what to do."""

from __future__ import annotations

__all__ = ["N3DeployError", "InvalidImageError", "ModelFileError", "EngineMismatchError", "BackendUnavailableError", "NoiseLevelWarning"]


class N3DeployError(Exception):
    """Base class of every error n3deploy raises on purpose."""


class InvalidImageError(N3DeployError, ValueError):
    """An input image n3deploy cannot denoise (empty, wrong ndim/channels/dtype, NaN/Inf)."""


class ModelFileError(N3DeployError, ValueError):
    """A model file that is missing, truncated, of the wrong format, or of the wrong layout."""


class EngineMismatchError(N3DeployError, RuntimeError):
    """A TensorRT plan built for another GPU/TensorRT, or an input outside its profile."""


class BackendUnavailableError(N3DeployError, RuntimeError):
    """A requested backend (or provider) that cannot run on this machine."""


class StaticGraphMemoryWarning(UserWarning):
    """A graph with every axis fixed: under ONNX Runtime's default memory planner (buffer reuse,
    which e.g. Triton's onnxruntime backend cannot switch off) it peaks several times higher than
    the same model exported with a symbolic axis (``export --batch dynamic`` or a dynamic size)."""


class NoiseLevelWarning(UserWarning):
    """An image whose estimated noise level is far from the sigma a sigma-specific model was trained for."""
