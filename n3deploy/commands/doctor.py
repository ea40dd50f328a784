"""``n3deploy doctor``: report what this machine can run (torch/CUDA, ONNX Runtime providers, TensorRT, GPU)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="report what this machine can run: GPU, torch/CUDA, working ONNX Runtime providers, TensorRT",
        description=(
            "Probe this machine and report what n3deploy can run on it. ONNX Runtime providers are tried "
            "with a real one-op session each (a listed provider may silently fall back to CPU); TensorRT "
            "is reported with its version or why it is missing.\n\n"
            "examples:\n"
            "  n3deploy doctor\n"
            "  n3deploy doctor --json > doctor.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-probe", action="store_true", help="skip creating ONNX Runtime sessions (faster, less certain)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..doctor import format_report, run_doctor

    report = run_doctor(probe_providers=not args.no_probe)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(format_report(report))
    return 0
