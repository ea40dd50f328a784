"""The training loop behind ``n3deploy train``.

Files in the run folder ``cfg.out``:

* ``last.safetensors`` / ``best.safetensors``: n3deploy checkpoints (best = highest
  validation PSNR; only written when there is validation data).
* ``train_state.pt``: model + optimiser state, step, history, config: what ``--resume``
  reads (written atomically, together with ``last.safetensors``).
* ``history.json``: the training curve's numbers; ``training_curve.png`` at the end.

Exact resume: patches and noise of step ``s`` come from a generator seeded with
``(seed, s, rank)`` (see :mod:`.data`) and the learning rate is a function of ``s``, so a run
stopped at any checkpoint and resumed reaches the same weights bit for bit (on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import N3DeployError
from ..fileio import atomic_path
from .config import TrainConfig, decay_start, learning_rate
from .data import PatchSampler, list_images, load_image, step_rng
from .distributed import DistInfo, broadcast_flag, replicas_in_sync, setup_distributed, teardown_distributed

__all__ = ["train", "TrainResult", "STATE_FILE", "LAST_FILE", "BEST_FILE", "HISTORY_FILE", "CURVE_FILE"]

STATE_FILE = "train_state.pt"
LAST_FILE = "last.safetensors"
BEST_FILE = "best.safetensors"
HISTORY_FILE = "history.json"
CURVE_FILE = "training_curve.png"
_STATE_VERSION = 1
_MAX_SKIPS_IN_ROW = 20  # non-finite steps tolerated in a row before the run stops
_EMA = 0.9  # smoothing of the running loss/PSNR shown in the progress bar (~10 steps)


class TrainResult(dict):
    """Summary of a finished (or stopped) run: step, best/last validation PSNR, paths, wall time."""


def _mse_to_psnr(mse: float) -> float:
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def _load_datasets(cfg: TrainConfig) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    train_paths = list_images(cfg.data)
    val_paths: list[Path] = []
    if cfg.val_split:
        if cfg.val_split >= len(train_paths):
            raise N3DeployError(f"--val-split {cfg.val_split} leaves no training images in {cfg.data}")
        train_paths, val_paths = train_paths[: -cfg.val_split], train_paths[-cfg.val_split :]
    elif cfg.val is not None:
        val_paths = list_images(cfg.val)
    train = [load_image(p, cfg.channels) for p in train_paths]
    val = [load_image(p, cfg.channels) for p in val_paths]
    if cfg.val_crop:
        val = [_center_crop(v, cfg.val_crop) for v in val]
    return train, val, [p.name for p in val_paths]


def _center_crop(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[-2:]
    th, tw = min(h, side), min(w, side)
    top, left = (h - th) // 2, (w - tw) // 2
    return np.ascontiguousarray(img[:, top : top + th, left : left + tw])


def _validate(model: torch.nn.Module, images: list[np.ndarray], names: list[str], cfg: TrainConfig, device) -> float:
    """Mean PSNR on the validation images with the evaluation protocol (seed 0, sigma = cfg.sigma)."""
    from ..evaluate import evaluate_arrays

    was_training = model.training
    model.eval()

    def denoise(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x).to(device)).float().cpu().numpy()

    try:
        report = evaluate_arrays(denoise, images, cfg.sigma, seed=0, names=names)
    finally:
        model.train(was_training)
    return report.mean_psnr


def _save_state(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


#: Schedule settings that may change on resume while the learning rate of every step already
#: taken stays the same (i.e. before the final decay starts): extend or shorten a run.
SCHEDULE_FIELDS = ("steps", "decay_fraction")


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, step: int) -> None:
    """Refuse settings that would make the resumed run differ from an uninterrupted one."""
    now = cfg.to_dict()
    saved = {"precision": "fp32", **saved}  # runs started before the setting existed trained in float32
    free = (*TrainConfig.RESUME_FREE, *SCHEDULE_FIELDS)
    diffs = [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in now if k not in free and saved.get(k) != now[k]]
    changed = [k for k in SCHEDULE_FIELDS if saved.get(k) != now[k]]
    if changed and not diffs:
        old = TrainConfig(**{**saved, "data": cfg.data, "out": cfg.out, "val": cfg.val, "sigma_range": cfg.sigma_range})
        if any(learning_rate(old, s) != learning_rate(cfg, s) for s in range(step)):
            limit = min(decay_start(old), decay_start(cfg))
            diffs.append(
                f"{', '.join(changed)}: may change only before the learning-rate decay starts "
                f"(step {limit} here; this run is at step {step})"
            )
    if diffs:
        raise N3DeployError(
            "cannot --resume with different settings (the result would not match an "
            "uninterrupted run): " + "; ".join(diffs)
        )


def _load_initial_weights(model: torch.nn.Module, path: Path, model_cfg, seed: int) -> None:
    """Copy the weights of checkpoint ``path`` into ``model`` (``--init-from``); a checkpoint
    whose DnCNN blocks are narrower is widened first, function-preserving (:mod:`.widen`). The
    KNN search window has no weights: a checkpoint of another window carries over as it is."""
    from ..checkpoint import load_checkpoint, read_checkpoint_header
    from .widen import can_widen, widen_dncnn

    saved_cfg, _ = read_checkpoint_header(path)
    saved_cfg = dataclasses.replace(saved_cfg, window=model_cfg.window)
    if saved_cfg == model_cfg:
        model.load_state_dict(load_checkpoint(path).state_dict())
    elif can_widen(saved_cfg, model_cfg):
        model.load_state_dict(widen_dncnn(load_checkpoint(path), model_cfg.dncnn_features, seed).state_dict())
    else:
        raise N3DeployError(
            f"--init-from {path}: its model config differs from this run's "
            f"({saved_cfg} vs {model_cfg}); pick the matching --preset/--channels "
            "(only a narrower dncnn_features can be widened)"
        )


def _plot_curve(history: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history if "train_psnr" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [h["train_psnr"] for h in history if "train_psnr" in h], label="train PSNR (running)")
    val = [(h["step"], h["val_psnr"]) for h in history if h.get("val_psnr") is not None]
    if val:
        ax.plot(*zip(*val), "o-", label="validation PSNR")
    # the first steps of a fresh N3Net sit far below the rest: zoom on the informative range
    tail = [h["train_psnr"] for h in history[len(history) // 10 :] if math.isfinite(h.get("train_psnr", math.nan))]
    lows = [v for _, v in val] + tail
    if lows:
        ax.set_ylim(bottom=min(lows) - 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _pick_threads(cfg: TrainConfig, info: DistInfo) -> int | None:
    if cfg.threads is not None:
        return cfg.threads
    if info.enabled and cfg.device == "cpu":
        return max(1, (os.cpu_count() or 1) // info.local_world_size)
    return None


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train an N3Net denoiser as described by ``cfg``; returns a summary.

    Runs data-parallel when launched by ``torchrun`` (one process per device; each
    draws ``cfg.batch_size`` patches per step). ``resume`` continues from
    ``cfg.out/train_state.pt``; without it an existing run folder is an error.
    """
    info, device = setup_distributed(cfg.device)
    try:
        return _train(cfg, resume, progress, info, device)
    finally:
        teardown_distributed()


def _train(cfg: TrainConfig, resume: bool, progress: bool, info: DistInfo, device: torch.device) -> TrainResult:
    from ..checkpoint import save_checkpoint
    from ..model import N3Net

    if device.type == "cuda" and not torch.cuda.is_available():
        raise N3DeployError("--device cuda but no CUDA GPU is visible to torch; use --device cpu")
    threads = _pick_threads(cfg, info)
    if threads:
        torch.set_num_threads(threads)
    out = cfg.out
    state_path = out / STATE_FILE
    if resume and not state_path.is_file():
        raise N3DeployError(f"--resume: no {STATE_FILE} in {out} (start without --resume)")
    if not resume and state_path.exists():
        raise N3DeployError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    train_images, val_images, val_names = _load_datasets(cfg)
    sampler = PatchSampler(
        train_images, crop=cfg.crop, sigma=cfg.sigma, sigma_range=cfg.sigma_range, augment=True
    )
    model_cfg = cfg.build_model_config()
    torch.manual_seed(cfg.seed)
    model = N3Net(model_cfg).to(device)
    if cfg.init_from is not None and not resume:
        _load_initial_weights(model, cfg.init_from, model_cfg, cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step, history, best_psnr, wall_before = 0, [], -math.inf, 0.0
    if resume:
        saved = torch.load(state_path, map_location=device, weights_only=True)
        if saved.get("version") != _STATE_VERSION:
            raise N3DeployError(f"{state_path}: unsupported state version {saved.get('version')!r}")
        _check_resumable(saved["train_config"], cfg, int(saved["step"]))
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        step, history = int(saved["step"]), list(saved["history"])
        best_psnr = float(saved["best_psnr"])
        wall_before = float(saved["wall_seconds"])
    model.train()
    net: torch.nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    start_step, start_time = step, time.perf_counter()
    end_step = cfg.steps if cfg.stop_after is None else min(cfg.steps, step + cfg.stop_after)
    meta_base = {
        "sigma": None if cfg.blind else cfg.sigma,
        "sigma_range": list(cfg.sigma_range) if cfg.blind else None,
        "preset": cfg.preset,
        "provenance": "trained with `n3deploy train`",
        "train": {k: v for k, v in cfg.to_dict().items() if k not in ("out", "stop_after")},
        "world_size": info.world_size,
        "hardware": _hardware(device),
        "torch": torch.__version__,
    }

    def wall() -> float:
        return wall_before + time.perf_counter() - start_time

    def checkpoint(val_psnr: float | None) -> None:
        nonlocal best_psnr, saved_step
        saved_step = step
        if not info.is_main:
            return
        meta = {**meta_base, "step": step, "wall_seconds": round(wall(), 1), "val_psnr": val_psnr}
        if val_psnr is not None and val_psnr > best_psnr:
            best_psnr = val_psnr
            save_checkpoint(model, out / BEST_FILE, **meta)
        save_checkpoint(model, out / LAST_FILE, **meta)
        _save_state(
            state_path,
            {
                "version": _STATE_VERSION,
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "history": history,
                "best_psnr": best_psnr,
                "wall_seconds": wall(),
                "train_config": cfg.to_dict(),
            },
        )
        with atomic_path(out / HISTORY_FILE) as tmp:
            tmp.write_text(json.dumps(history, indent=1) + "\n")

    bar = None
    if progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
    ema_loss = history[-1]["train_loss_ema"] if history else None
    last_val: float | None = None
    saved_step = step  # the step of the state on disk
    stop = _StopRequest()
    interrupted = False
    skipped = skipped_in_row = 0
    stat_buffers = [b for b in model.buffers() if b.is_floating_point()]  # batch-norm statistics
    try:
        while step < end_step:
            if broadcast_flag(stop.requested, info, device):
                interrupted = True
                if saved_step != step:
                    checkpoint(None)
                break
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            noisy, clean, _ = sampler.batch(step_rng(cfg.seed, step, info.rank), cfg.batch_size)
            noisy_t, clean_t = torch.from_numpy(noisy).to(device), torch.from_numpy(clean).to(device)
            optimizer.zero_grad(set_to_none=True)
            # batch-norm statistics change in the forward pass: keep a copy to undo a broken step
            saved_stats = [b.detach().clone() for b in stat_buffers]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                denoised = net(noisy_t)  # bf16: convolutions in bfloat16, KNN aggregations in float32
            loss = torch.nn.functional.mse_loss(denoised.float(), clean_t)
            loss.backward()  # also when the loss is not finite: data-parallel ranks must all reduce
            # The norm is computed after the all-reduce, so every rank takes the same decision.
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf))
            value = float(loss.detach())
            skip = not (math.isfinite(grad_norm) and math.isfinite(value))
            if skip:  # one non-finite step must not turn every weight into NaN: undo it
                optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    for buffer, saved in zip(stat_buffers, saved_stats):
                        buffer.copy_(saved)
                skipped += 1
                skipped_in_row += 1
                if skipped_in_row > _MAX_SKIPS_IN_ROW:
                    raise N3DeployError(
                        f"loss or gradients not finite for {skipped_in_row} steps in a row (last: loss {value}, "
                        f"gradient norm {grad_norm}) at step {step}; lower --lr or keep --grad-clip"
                    )
            else:
                optimizer.step()
                skipped_in_row = 0
            step += 1
            if not skip:
                ema_loss = value if ema_loss is None else _EMA * ema_loss + (1 - _EMA) * value
            record: dict[str, Any] = {
                "step": step,
                "lr": lr,
                "train_loss": value,
                "train_loss_ema": ema_loss,
                "train_psnr": _mse_to_psnr(ema_loss) if ema_loss is not None else math.nan,
                "wall_seconds": round(wall(), 2),
                "grad_norm": grad_norm,
            }
            if skip:
                record["skipped"] = True
            at_end = step == end_step
            if step % cfg.val_every == 0 or at_end:
                last_val = None
                if val_images and info.is_main:
                    last_val = _validate(model, val_images, val_names, cfg, device)
                record["val_psnr"] = last_val
                history.append(record)
                checkpoint(last_val)
            else:
                history.append(record)
            if bar is not None:
                bar.update(1)
                post = {"loss": f"{ema_loss:.2e}", "psnr": f"{record['train_psnr']:.2f}", "lr": f"{lr:.1e}"}
                if last_val is not None:
                    post["val"] = f"{last_val:.2f}"
                bar.set_postfix(post)
    finally:
        stop.restore()
        if bar is not None:
            bar.close()
    if interrupted and info.is_main:
        print(f"stopped by signal at step {step}; continue with --resume", file=sys.stderr)
    if skipped and info.is_main:
        print(f"warning: {skipped} step(s) had a non-finite loss or gradient and were not applied "
              "(marked 'skipped' in history.json)", file=sys.stderr)

    in_sync = replicas_in_sync(model, info, device)
    if not in_sync:
        raise N3DeployError("data-parallel replicas diverged (parameters differ between ranks)")
    done = step >= cfg.steps
    if info.is_main and done:
        try:
            _plot_curve(history, out / CURVE_FILE, f"n3deploy train: {cfg.preset}, sigma={_sigma_text(cfg)}")
        except Exception as exc:  # a missing matplotlib must not lose a finished run
            print(f"warning: could not draw the training curve: {exc}", file=sys.stderr)
    broadcast_flag(True, info, device)  # keep ranks together until rank 0 has written everything
    return TrainResult(
        step=step,
        finished=done,
        best_val_psnr=best_psnr if best_psnr > -math.inf else None,
        last_val_psnr=last_val,
        wall_seconds=wall(),
        steps_per_second=(step - start_step) / max(1e-9, time.perf_counter() - start_time),
        world_size=info.world_size,
        replicas_in_sync=in_sync,
        skipped_steps=skipped,
        out=str(out),
    )


class _StopRequest:
    """SIGINT/SIGTERM set a flag that the loop checks between steps (never mid-update).

    The run then checkpoints and returns, resumable with ``--resume``. A second signal
    restores the default behaviour (Ctrl-C twice aborts at once).
    """

    def __init__(self) -> None:
        import signal
        import threading

        self.requested = False
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        import signal

        if self.requested:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.requested = True
        print("\nstopping after this step (signal again to abort now)", file=sys.stderr)

    def restore(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _sigma_text(cfg: TrainConfig) -> str:
    return f"{cfg.sigma_range[0]:g}-{cfg.sigma_range[1]:g}" if cfg.blind else f"{cfg.sigma:g}"


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_name()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
