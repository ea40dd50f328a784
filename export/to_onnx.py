#!/usr/bin/env python3
"""Export an n3deploy checkpoint to ONNX: the same code as ``n3deploy export``.

    python export/to_onnx.py --checkpoint M.safetensors -o model.onnx [--fp16] [--height H --width W]

See ``python export/to_onnx.py --help`` and docs/onnx.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source checkout

from n3deploy.commands.export import DESCRIPTION, add_export_arguments, run  # noqa: E402
from n3deploy.errors import N3DeployError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="export/to_onnx.py", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_export_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except N3DeployError as exc:
        print(f"export/to_onnx.py: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
