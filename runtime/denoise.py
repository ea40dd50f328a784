#!/usr/bin/env python3
"""Denoise image files: a thin script over ``n3deploy denoise`` (same options; see --help)."""

import sys

from n3deploy.cli import main
from n3deploy.perf import reexec_with_hugepages

if __name__ == "__main__":
    reexec_with_hugepages()  # as the `n3deploy` command does (n3deploy/perf.py)
    sys.exit(main(["denoise", *sys.argv[1:]]))
