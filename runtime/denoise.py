#!/usr/bin/env python3
"""Denoise image files: a thin script over ``n3deploy denoise`` (same options; see --help)."""

import sys

from n3deploy.cli import main

if __name__ == "__main__":
    sys.exit(main(["denoise", *sys.argv[1:]]))
