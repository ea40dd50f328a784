"""``n3deploy inspect``: print the TensorRT audit of an ONNX graph (no PyTorch needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Print what an ONNX graph contains and whether TensorRT can build it: inputs/outputs, n3deploy
metadata (config, sigma, version, input spec), op histogram, the precision (fp16/fp32) of each
part of the network, and the largest tensors at the maximum input size (TensorRT needs fewer
than 2^31 elements per tensor). Exits with 1 when the audit fails.

examples:
  n3deploy inspect model.onnx
  n3deploy inspect model_fp16.onnx --max-height 4320 --max-width 7680
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="audit an ONNX graph for TensorRT: ops, shapes, sizes, precision, metadata",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", type=Path, help="an .onnx file")
    p.add_argument("--max-height", type=int, default=None, help="audit at this height (default: the declared maximum)")
    p.add_argument("--max-width", type=int, default=None, help="audit at this width (default: the declared maximum)")
    p.add_argument("--top", type=int, default=5, help="how many of the largest tensors to list (default: 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export.audit import audit_model

    report = audit_model(args.model, max_height=args.max_height, max_width=args.max_width)
    print(report.format(top=args.top))
    return 0 if report.ok else 1
