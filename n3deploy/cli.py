"""The ``n3deploy`` command line: one sub-command per module, each registering itself.

Every command module exposes ``register(subparsers)`` which adds its parser and sets
``func(args) -> int``. Commands import their heavy dependencies (torch, onnx, tensorrt)
lazily so ``n3deploy --help`` is instant and works without torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import N3DeployError

# Modules providing sub-commands, in the order --help lists them.
COMMAND_MODULES = [
    "n3deploy.commands.demo",
    "n3deploy.commands.denoise",
    "n3deploy.commands.models",
    "n3deploy.commands.train",
    "n3deploy.commands.evaluate",
    "n3deploy.commands.export",
    "n3deploy.commands.inspect",
    "n3deploy.commands.parity",
    "n3deploy.commands.build_engine",
    "n3deploy.commands.serve",
    "n3deploy.commands.triton_repo",
    "n3deploy.commands.bench",
    "n3deploy.commands.doctor",
    "n3deploy.commands.convert_official",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="n3deploy",
        description=(
            "N3Net image denoising from PyTorch to production: train, export to ONNX (FP32/FP16), "
            "build TensorRT engines, check parity between backends, denoise images.\n\n"
            "Start with `n3deploy demo` (no arguments, no data needed)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"n3deploy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console command, not a call from Python: restart with huge pages (perf.py)
        from .perf import reexec_with_hugepages

        reexec_with_hugepages()
    parser = build_parser()
    args = parser.parse_args(argv)
    from .perf import tune_cpu_allocator

    tune_cpu_allocator()  # our own process: reuse large blocks instead of page-faulting (see perf.py)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except N3DeployError as exc:
        print(f"n3deploy {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
