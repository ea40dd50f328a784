"""Smoke test of the ``serve_load`` benchmark scenario (quick: one two-replica server, a replica killed)."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("tritonclient.http")
pytest.importorskip("psutil")


def test_serve_load_quick_runs_bounded_and_reports_every_figure():
    from n3deploy.benchmarking.scenarios import ScenarioOptions, get_scenario

    scenario = get_scenario("serve_load")
    t0 = time.perf_counter()
    results = scenario.run(ScenarioOptions(quick=True))
    elapsed = time.perf_counter() - t0
    assert elapsed < 90, f"quick serve_load took {elapsed:.0f} s"
    assert {r["clients"] for r in results["load"]} == {1, 4}
    for row in results["load"]:
        assert row["requests"] > 0 and row["errors"] == 0 and row["wrong"] == 0, row
        assert row["requests_per_s"] > 0 and row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    fault = results["fault"]
    assert "skipped" not in fault, fault
    assert fault["wrong"] == 0 and fault["ok"] > 0 and fault["replica_back_s"] is not None, fault
    text = scenario.render(results)
    assert text.startswith("## Serving under load") and "replica" in text
