"""Measurement helpers shared by ``runtime/bench.py`` and ``n3deploy bench``."""
