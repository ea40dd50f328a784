#!/usr/bin/env python3
"""Benchmark N3Net on every available backend; same options as ``n3deploy bench``.

    python runtime/bench.py --quick
    python runtime/bench.py --pause-pid $(cat runs/default/pid) --write-benchmarks
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from n3deploy.commands.bench import add_arguments, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="runtime/bench.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.prog_name = "python runtime/bench.py"
    return run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
