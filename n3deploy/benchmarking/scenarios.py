"""Benchmark scenarios beyond the backend x size grid: one registry, read by ``n3deploy bench``.

A scenario measures one deployment path end to end (batch jobs on Ray Data, a served model under
load, graph memory under another runtime's default settings, ...). Each one registers a
:class:`Scenario` with a ``run`` function that returns a JSON-able dict of measurements and a
``render`` function that turns that dict into a Markdown section of BENCHMARKS.md.

``n3deploy bench --scenarios NAME [NAME ...]`` runs them (``--scenarios all`` for every one) and
stores each result under ``results.json``'s ``"scenarios"`` key; the report renders every stored
scenario in registry order. Scenario modules register themselves on import; the modules listed in
:data:`SCENARIO_MODULES` are imported by :func:`scenarios` (missing ones are skipped).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Scenario", "ScenarioOptions", "register_scenario", "scenarios", "get_scenario", "SCENARIO_MODULES"]

# Modules that define scenarios (each calls register_scenario at import time).
SCENARIO_MODULES = [
    "n3deploy.benchmarking.graph_memory",
    "n3deploy.benchmarking.ray_batch",
    "n3deploy.benchmarking.serve_load",
]


@dataclass(frozen=True)
class ScenarioOptions:
    """What every scenario gets from the command line.

    ``threads``: CPU threads for in-process inference (0 = all cores); ``quick``: a short run
    (fewer sizes/requests) for smoke tests; ``max_job_s``: soft time limit per measured job.
    """

    threads: int = 0
    quick: bool = False
    max_job_s: float = 90.0


@dataclass(frozen=True)
class Scenario:
    """One registered scenario.

    ``run(options) -> dict``: measure, return JSON-able results (include the exact settings used).
    ``render(results) -> str``: a Markdown section (starting with a ``## `` heading) for BENCHMARKS.md.
    """

    name: str
    title: str
    run: Callable[[ScenarioOptions], dict[str, Any]]
    render: Callable[[dict[str, Any]], str]
    needs: tuple[str, ...] = field(default=())  # importable modules it needs (reported when missing)
    min_timeout_s: float = 0.0  # its worker's time limit is at least this (long scenarios)


_REGISTRY: dict[str, Scenario] = {}


def register_scenario(scenario: Scenario) -> Scenario:
    """Add ``scenario`` to the registry (re-registering a name replaces it)."""
    _REGISTRY[scenario.name] = scenario
    return scenario


def scenarios() -> dict[str, Scenario]:
    """Every registered scenario, in :data:`SCENARIO_MODULES` order."""
    for module in SCENARIO_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return dict(_REGISTRY)


def get_scenario(name: str) -> Scenario:
    known = scenarios()
    if name not in known:
        raise ValueError(f"unknown benchmark scenario {name!r}; choose from {', '.join(known) or '(none)'}")
    return known[name]
