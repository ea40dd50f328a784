"""``n3deploy models``: list the model registry (shipped and official models)."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
List every named model: its preset, the noise it was trained for (one sigma, or a range for a
blind model), channels, parameters, file size, the Set12 PSNR of its model card
(docs/model_card.md, ONNX Runtime) and whether its file is here. Any of the names works wherever a
model is taken (Denoiser("tiny-blind"), --model, --checkpoint). The official-* entries are the
authors' pretrained weights, which n3deploy never downloads: `n3deploy models NAME` prints the
convert-official command that makes the name usable.

examples:
  n3deploy models
  n3deploy models official-sigma50      # how to get it
  n3deploy models --json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the named models (shipped, blind, official) and where their files are",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", default=None, help="show one model: its details and how to get its file")
    p.add_argument("--json", action="store_true", help="print the registry as JSON")
    p.set_defaults(func=run)


def _size(n: int | None) -> str:
    return "-" if n is None else (f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB")


def _psnr(entry) -> str:
    return ", ".join(f"{v:.2f} @{k:g}" for k, v in sorted(entry.set12_psnr.items())) or "-"


def format_table(entries) -> str:
    """The registry as a fixed-width text table (one row per entry)."""
    from ..models import default_model_name

    default = default_model_name()
    header = ("name", "preset", "noise", "ch", "params", "size", "Set12 PSNR (dB @σ)", "file")
    rows = [header]
    for e in entries:
        where = ("shipped" if e.shipped else "converted") if e.available else (
            "missing" if e.shipped else "not converted: n3deploy models " + e.name)
        rows.append((
            e.name + (" *" if e.name == default else ""),
            e.preset + "".join(f" {k}={v}" for k, v in e.config.items()), e.noise, str(e.channels),
            "-" if e.parameters is None else f"{e.parameters:,}", _size(e.file_size), _psnr(e), where,
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("* the default model (Denoiser() and the commands without --model)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..models import get_model, list_models

    if args.name is not None:
        entry = get_model(args.name)
        if args.json:
            print(json.dumps(entry.as_dict(), indent=2))
            return 0
        print(format_table([entry]))
        print()
        print(f"{entry.name}: {entry.summary}")
        print(f"file: {entry.path}" if entry.available else entry.instructions())
        return 0 if entry.available else 1
    entries = list_models()
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
    else:
        print(format_table(entries))
    return 0
