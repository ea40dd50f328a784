"""The model registry: every named N3Net model n3deploy knows, shipped or converted locally.

One naming scheme, ``<preset>-<noise>`` (``tiny-sigma25``, ``paper-sigma25``, ``tiny-blind``,
``official-sigma50``): each entry names an :class:`~n3deploy.config.N3NetConfig` preset
(:data:`n3deploy.config.PRESETS`) and the fields its architecture changes from it
(``config``: ``tiny-blind`` has wider DnCNN blocks), the noise it was trained for (one σ, or a
range for blind models), its channels and the Set12 PSNR its model card
(``docs/model_card.md``) reports. The
entries live in ``n3deploy/assets/models.json``, the one place those figures are written as data.

* **Shipped** entries are files inside the package (``n3deploy/assets``).
* **Official** entries (``official-sigma25/50/70``) are the authors' pretrained weights, which
  n3deploy never downloads: convert the ``.t7`` checkpoint from visinf/n3net once with
  ``n3deploy convert-official`` into the model home (``$N3DEPLOY_HOME/models``, default
  ``~/.cache/n3deploy/models``); resolving the name before that raises
  :class:`~n3deploy.errors.ModelFileError` with the exact command.

Everywhere a model is taken (``Denoiser(model_path=...)``, every ``--model`` flag) a registry
name or a file path works: :func:`resolve_model` turns either into a path.

    >>> import n3deploy
    >>> [m.name for m in n3deploy.list_models()]          # doctest: +SKIP
    >>> model = n3deploy.load_model("tiny-sigma25")        # an eval-mode N3Net (needs torch)
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import ModelFileError

__all__ = [
    "ModelEntry",
    "list_models",
    "get_model",
    "resolve_model",
    "load_model",
    "default_model_name",
    "model_home",
    "is_model_name",
    "model_arg",
    "ASSETS_DIR",
    "REGISTRY_FILE",
]

#: Folder of the shipped model files (the ``n3deploy.assets`` package).
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
#: The registry's data: entries and the default model's name.
REGISTRY_FILE = ASSETS_DIR / "models.json"
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_URL_PREFIXES = ("http://", "https://")


@dataclass(frozen=True)
class ModelEntry:
    """One named model.

    Attributes:
        name: registry name (``tiny-sigma25``).
        file: file name (in ``n3deploy/assets`` when shipped, else in :func:`model_home`).
        preset: the :class:`~n3deploy.config.N3NetConfig` preset of its architecture.
        config: fields of the architecture that differ from the preset (``{"dncnn_features": 48}``).
        channels: image channels it denoises (1 = grayscale; colour images go channel by channel).
        sigma: the noise level it was trained for (0–255 scale); ``None`` for a blind model.
        sigma_range: ``(low, high)`` for a blind model (σ drawn uniformly per crop), else ``None``.
        set12_psnr: σ -> mean Set12 PSNR (dB) through ONNX Runtime, as its model card reports.
        official: the authors' weights, converted locally with ``n3deploy convert-official``.
        summary: one line for ``n3deploy models``.
    """

    name: str
    file: str
    preset: str
    channels: int = 1
    sigma: Optional[float] = None
    sigma_range: Optional[tuple[float, float]] = None
    set12_psnr: dict[float, float] = field(default_factory=dict)
    official: bool = False
    summary: str = ""
    config: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.sigma is None) == (self.sigma_range is None):
            raise ValueError(f"model {self.name!r}: give exactly one of sigma and sigma_range")

    def model_config(self) -> Any:
        """The :class:`~n3deploy.config.N3NetConfig` of the model: the preset with ``config`` applied."""
        import dataclasses

        from .config import N3NetConfig

        return dataclasses.replace(N3NetConfig.preset(self.preset, self.channels), **self.config)

    @property
    def shipped(self) -> bool:
        """True when the file is part of the package (not converted by the user)."""
        return not self.official

    @property
    def blind(self) -> bool:
        return self.sigma_range is not None

    @property
    def noise(self) -> str:
        """``σ=25`` or ``σ∈[0, 55]``."""
        if self.sigma_range is not None:
            return f"σ∈[{self.sigma_range[0]:g}, {self.sigma_range[1]:g}]"
        return f"σ={self.sigma:g}"

    @property
    def path(self) -> Path:
        """Where the file is (or would be): the package's assets, or the model home."""
        return (ASSETS_DIR if self.shipped else model_home()) / self.file

    @property
    def available(self) -> bool:
        return self.path.is_file()

    @property
    def file_size(self) -> Optional[int]:
        """Bytes of the file, ``None`` when it is not there."""
        return self.path.stat().st_size if self.available else None

    @property
    def parameters(self) -> Optional[int]:
        """Trainable parameters: counted from the file's tensors, else from :meth:`model_config` (needs torch; else ``None``)."""
        if self.available:
            return _count_parameters(str(self.path), self.path.stat().st_mtime_ns)
        return _config_parameters(self.model_config())

    def instructions(self) -> str:
        """How to get this model's file when it is missing."""
        if self.official:
            return (
                f"{self.name} is the authors' pretrained model, which n3deploy does not download: get the "
                f"sigma={self.sigma:g} checkpoint (.t7) from https://github.com/visinf/n3net "
                f"(results_gaussian_denoising/pretrained_sigma{self.sigma:g}/checkpoint/) and convert it once:\n"
                f"  n3deploy convert-official CHECKPOINT.t7 --sigma {self.sigma:g} -o {self.path}"
            )
        return (
            f"the shipped model file {self.file} is missing from {self.path.parent}; reinstall n3deploy, "
            "or pass a model file explicitly (train one with `n3deploy train`, see docs/training.md)"
        )

    def resolve(self) -> Path:
        """The file's path; :class:`ModelFileError` (with :meth:`instructions`) when missing."""
        path = self.path
        if not path.is_file():
            raise ModelFileError(self.instructions())
        return path

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (with the file's size and parameter count when present)."""
        return {
            "name": self.name, "preset": self.preset, "config": dict(self.config), "noise": self.noise, "sigma": self.sigma,
            "sigma_range": list(self.sigma_range) if self.sigma_range else None, "channels": self.channels,
            "parameters": self.parameters, "file_size": self.file_size, "path": str(self.path),
            "available": self.available, "shipped": self.shipped,
            "set12_psnr": {f"{k:g}": v for k, v in self.set12_psnr.items()}, "summary": self.summary,
        }


def model_home() -> Path:
    """Where user-converted models go: ``$N3DEPLOY_HOME/models`` (default ``~/.cache/n3deploy/models``)."""
    root = os.environ.get("N3DEPLOY_HOME")
    return (Path(root) if root else Path.home() / ".cache" / "n3deploy") / "models"


@functools.lru_cache(maxsize=None)
def _registry() -> tuple[dict[str, ModelEntry], str]:
    data = json.loads(REGISTRY_FILE.read_text(encoding="utf-8"))
    entries: dict[str, ModelEntry] = {}
    for raw in data["models"]:
        rng = raw.get("sigma_range")
        entry = ModelEntry(
            name=raw["name"], file=raw["file"], preset=raw["preset"], channels=int(raw.get("channels", 1)),
            sigma=None if raw.get("sigma") is None else float(raw["sigma"]),
            sigma_range=None if rng is None else (float(rng[0]), float(rng[1])),
            set12_psnr={float(k): float(v) for k, v in (raw.get("set12_psnr") or {}).items()},
            official=bool(raw.get("official", False)), summary=raw.get("summary", ""),
            config={str(k): int(v) for k, v in (raw.get("config") or {}).items()},
        )
        if entry.name in entries:
            raise ValueError(f"{REGISTRY_FILE}: model {entry.name!r} listed twice")
        entries[entry.name] = entry
    default = data["default"]
    if default not in entries or not entries[default].shipped:
        raise ValueError(f"{REGISTRY_FILE}: default {default!r} is not a shipped model")
    return entries, default


@functools.lru_cache(maxsize=64)
def _count_parameters(path: str, mtime_ns: int) -> int:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            total = 0
            for key in f.keys():
                if not key.endswith(_BUFFERS):
                    n = 1
                    for d in f.get_slice(key).get_shape():
                        n *= int(d)
                    total += n
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable .safetensors file ({exc})") from None
    return total


@functools.lru_cache(maxsize=None)
def _config_parameters(config: Any) -> Optional[int]:
    """Trainable parameters of an N3Net of ``config`` (an ``N3NetConfig``); ``None`` without torch."""
    try:
        from .model import N3Net
    except ImportError:  # a deployment install without torch
        return None
    model = N3Net(config)
    return sum(p.numel() for p in model.parameters())


def list_models(shipped_only: bool = False) -> list[ModelEntry]:
    """Every registry entry (shipped first, in registry order); ``shipped_only`` drops the official ones."""
    entries = list(_registry()[0].values())
    return [e for e in entries if e.shipped or not shipped_only]


def default_model_name() -> str:
    """Name of the model ``Denoiser()`` and the commands use when none is given."""
    return _registry()[1]


def get_model(name: str) -> ModelEntry:
    """The entry called ``name``; :class:`ModelFileError` listing the names when there is none."""
    entries = _registry()[0]
    if name not in entries:
        raise ModelFileError(f"no model named {name!r} in the registry; known: {', '.join(entries)}")
    return entries[name]


def is_model_name(value: Any) -> bool:
    """True when ``value`` names a registry entry (a string, or a path-like with no such file)."""
    if isinstance(value, os.PathLike) and not Path(value).exists():
        value = os.fspath(value)
    return isinstance(value, str) and value in _registry()[0]


def model_arg(text: str) -> Path | str:
    """argparse ``type=`` for ``--model`` flags: a registry name -> its file, a URL as is, else a path.

    A missing file of a registry entry (e.g. an official model not converted yet) is reported by
    argparse with the instructions of :meth:`ModelEntry.instructions`.
    """
    import argparse

    if text.startswith(_URL_PREFIXES):
        return text
    try:
        return resolve_model(text)
    except ModelFileError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A registry name -> its file; a path passes through unchanged (as a :class:`Path`).

    Raises:
        ModelFileError: a registry name whose file is missing (for the official entries: the
            ``convert-official`` command to run), or a bare word that is neither a name nor a file.
    """
    if is_model_name(name_or_path):
        return get_model(os.fspath(name_or_path)).resolve()
    path = Path(name_or_path)
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, str) and text.startswith(_URL_PREFIXES):
        raise ModelFileError(f"{text} is a server URL, not a model file: pass it to Denoiser or --backend remote")
    if not path.exists() and not path.suffix and os.sep not in text and "/" not in text:
        raise ModelFileError(
            f"{text!r} is neither a model file nor a registry name; names: {', '.join(_registry()[0])} "
            "(`n3deploy models` lists them)"
        )
    return path


def load_model(name_or_path: str | os.PathLike, knn: str = "static"):
    """An eval-mode :class:`~n3deploy.model.N3Net` from a registry name or a checkpoint path (needs torch).

    ``.safetensors`` n3deploy checkpoints only; the authors' ``.t7`` files are read with
    :func:`n3deploy.load_official` (or converted once with ``n3deploy convert-official``).
    """
    from .checkpoint import load_checkpoint

    path = resolve_model(name_or_path)
    if path.suffix.lower() == ".t7":
        from .official import load_official

        return load_official(path, knn=knn)
    if path.suffix.lower() != ".safetensors":
        raise ModelFileError(
            f"{path}: load_model reads n3deploy .safetensors checkpoints; run .onnx/.plan files with n3deploy.Denoiser"
        )
    return load_checkpoint(path, knn=knn)
