"""``n3deploy train``: train an N3Net denoiser on a folder of clean images."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """\
examples:
  # sigma=25 grayscale model on BSD400, validating on 8 held-out training images
  n3deploy train --data data/train400 --val-split 8 --preset tiny --sigma 25 --out runs/tiny25

  # blind model (sigma drawn from [0, 55] per patch), validated at sigma 25 on Set12
  n3deploy train --data data/train400 --val data/set12 --sigma-range 0 55 --out runs/blind

  # continue a stopped run exactly where it stopped (same settings; --steps and
  # --decay-fraction may change before the final learning-rate decay starts, e.g. to extend a run)
  n3deploy train --data data/train400 --val-split 8 --out runs/tiny25 --resume

  # warm restart / fine-tuning: a new run that starts from a checkpoint's weights
  n3deploy train --data data/train400 --val-split 8 --init-from runs/tiny25/best.safetensors \\
      --lr 5e-4 --out runs/tiny25-more

  # more capacity: widen a trained model's DnCNN blocks (32 -> 48 features), then train on
  n3deploy train --data data/train400 --val-split 8 --dncnn-features 48 \\
      --init-from runs/tiny25/best.safetensors --lr 3e-4 --out runs/tiny25-wide

  # data-parallel: 2 processes (gloo on CPU, NCCL with --device cuda)
  torchrun --nproc-per-node 2 -m n3deploy.cli train --data data/train400 --out runs/ddp

Writes to --out: last.safetensors, best.safetensors (with validation), train_state.pt
(for --resume), history.json and training_curve.png. Same seed + same settings = same weights.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an N3Net denoiser on a folder of images",
        description=(
            "Train N3Net on random crops (flips, 90-degree rotations) of clean images with "
            "Gaussian noise drawn on the fly; Adam, warm-up + cosine learning-rate decay, MSE loss, "
            "gradient-norm clipping. Validates with the `n3deploy eval` protocol.\n\n" + EXAMPLES
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="folder of clean training images")
    p.add_argument("--out", type=Path, required=True, help="run folder, e.g. runs/NAME")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val", type=Path, default=None, help="folder of clean validation images")
    val.add_argument("--val-split", type=int, default=0, metavar="N", help="hold out the last N training images for validation")
    from ..config import preset_names
    from ..training.config import TRAIN_PRECISIONS

    p.add_argument("--preset", default="tiny", choices=preset_names(), help="model size (default: tiny)")
    p.add_argument("--dncnn-features", type=int, default=None, metavar="N",
                   help="DnCNN width instead of the preset's (tiny: 32, paper: 64); with --init-from a narrower "
                        "checkpoint of the same preset, its DnCNN blocks are widened keeping its function (Net2Net)")
    p.add_argument("--window", type=int, default=None, metavar="N",
                   help="KNN search window in patches per side, odd, instead of the preset's (tiny: 7, paper: 15); "
                        "it has no weights: --init-from a checkpoint of another window carries its weights over")
    p.add_argument("--channels", type=int, default=1, choices=[1, 3], help="1 = grayscale, 3 = RGB (default: 1)")
    p.add_argument("--sigma", type=float, default=25.0, help="noise level, 0-255 scale (default: 25); also the validation level")
    p.add_argument("--sigma-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"), help="blind model: sigma uniform in [LOW, HIGH] per patch")
    p.add_argument("--steps", type=int, default=2000, help="total optimisation steps (default: 2000)")
    p.add_argument("--batch-size", type=int, default=16, help="patches per step per process (default: 16)")
    p.add_argument("--crop", type=int, default=80, help="patch side in pixels (default: 80, as the authors)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    p.add_argument("--lr-final", type=float, default=0.01, help="final lr as a fraction of --lr (default: 0.01)")
    p.add_argument("--warmup-steps", type=int, default=50, help="linear warm-up steps (default: 50)")
    p.add_argument("--decay-fraction", type=float, default=0.4, help="final fraction of --steps with cosine lr decay; 1 = plain cosine (default: 0.4)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm; 0 disables (default: 1.0)")
    p.add_argument("--val-every", type=int, default=200, help="validate + checkpoint every N steps (default: 200)")
    p.add_argument("--val-crop", type=int, default=None, help="centre-crop validation images to this side (faster)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, patches and noise (default: 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--stop-after", type=int, default=None, metavar="N", help="stop (resumably) after N steps of this invocation")
    p.add_argument("--compile", action="store_true", help="use torch.compile (slow start, faster steps)")
    p.add_argument("--init-from", type=Path, default=None, metavar="CKPT", help="start from this checkpoint's weights (fine-tune / warm restart; fresh optimiser)")
    p.add_argument("--precision", default="fp32", choices=TRAIN_PRECISIONS,
                   help="forward pass: fp32, or bf16 = the precision plan (convolutions bfloat16 under autocast, KNN "
                        "float32; weights, optimiser and validation float32): faster steps on CPUs with AVX512_BF16/AMX "
                        "and on GPUs (default: fp32)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The :class:`~n3deploy.training.TrainConfig` described by parsed arguments."""
    import dataclasses

    from ..config import N3NetConfig
    from ..training import TrainConfig

    model_config = None
    changes = {k: v for k, v in (("dncnn_features", args.dncnn_features), ("window", args.window)) if v is not None}
    if changes:
        model_config = dataclasses.replace(N3NetConfig.preset(args.preset, args.channels), **changes)
    return TrainConfig(
        model_config=model_config,
        data=args.data,
        out=args.out,
        val=args.val,
        val_split=args.val_split,
        preset=args.preset,
        channels=args.channels,
        sigma=args.sigma,
        sigma_range=tuple(args.sigma_range) if args.sigma_range else None,
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        lr_final=args.lr_final,
        warmup_steps=args.warmup_steps,
        decay_fraction=args.decay_fraction,
        grad_clip=args.grad_clip or None,
        val_every=args.val_every,
        val_crop=args.val_crop,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        stop_after=args.stop_after,
        compile=args.compile,
        init_from=args.init_from,
        precision=args.precision,
    )


def run(args: argparse.Namespace) -> int:
    from ..errors import N3DeployError
    from ..training import train

    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        raise N3DeployError(str(exc)) from None
    result = train(cfg, resume=args.resume, progress=not args.no_progress)
    if result.get("world_size", 1) > 1 and not _is_rank0():
        return 0
    state = "finished" if result["finished"] else "stopped (continue with --resume)"
    best = result["best_val_psnr"]
    print(
        f"{state} at step {result['step']} in {result['wall_seconds'] / 60:.1f} min "
        f"({result['steps_per_second']:.3f} steps/s)"
        + (f"; best validation PSNR {best:.2f} dB" if best is not None else "")
        + f"; checkpoints in {cfg.out}"
    )
    return 0


def _is_rank0() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
