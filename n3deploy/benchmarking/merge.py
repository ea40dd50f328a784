"""Merging a new results document into an older one (``n3deploy bench --update``)."""

from __future__ import annotations

from typing import Any

__all__ = ["merge_results", "matmul_peaks", "machine_mismatch"]

MACHINE_KEYS = ("cpu", "cpu_flags", "logical_cores", "gpu")


def machine_mismatch(old_machine: dict[str, Any], machine: dict[str, Any]) -> "str | None":
    """Why results measured on ``old_machine`` must not be merged with ``machine``'s (``None``: the
    same kind of machine): one report describes one machine, so rows of two would be mislabelled."""
    differ = [k for k in MACHINE_KEYS if old_machine.get(k) != machine.get(k)]
    if not differ:
        return None
    return "; ".join(f"{k}: {old_machine.get(k)!r} there, {machine.get(k)!r} here" for k in differ)


def matmul_peaks(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{precision: peak}`` of a document (schema 1 documents hold one float32 ``matmul_peak``)."""
    if "matmul_peaks" in doc:
        return dict(doc["matmul_peaks"])
    return {"fp32": doc["matmul_peak"]} if doc.get("matmul_peak") else {}


def merge_results(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with what ``old`` measured and ``new`` did not: rows by (row, size), the breakdown,
    the Denoiser measurement and scenarios by name.

    The commands of both runs are kept (``commands``); each precision's matmul peak is the higher of
    the two and the breakdown the one measured with less CPU used by other processes.
    """
    merged = dict(new)
    key = lambda r: (r["backend"], r["width"], r["height"])  # noqa: E731
    fresh = {key(r): r for r in new["results"] if r["status"] == "ok"}
    rows = [fresh.pop(key(r), r) for r in old.get("results", [])]
    rows += [r for r in new["results"] if key(r) in fresh or key(r) not in {key(o) for o in rows}]
    merged["results"] = rows
    probed = {b["name"] for b in new.get("backends", [])}
    merged["backends"] = [*new.get("backends", []), *(b for b in old.get("backends", []) if b["name"] not in probed)]
    if not (new.get("denoiser") or {}).get("ok") and (old.get("denoiser") or {}).get("ok"):
        merged["denoiser"] = old["denoiser"]
    ob, nb = old.get("breakdown") or {}, new.get("breakdown") or {}
    if ob and (not nb or ob.get("foreign_cpu_share", 1.0) < nb.get("foreign_cpu_share", 1.0)):
        merged["breakdown"] = ob  # keep the less contended breakdown
    merged["commands"] = [*old.get("commands", [old.get("command", "")]), new["command"]]
    peaks = matmul_peaks(new)
    for precision, peak in matmul_peaks(old).items():
        if peak.get("gflops", 0) > peaks.get(precision, {}).get("gflops", 0):
            peaks[precision] = peak
    merged["matmul_peaks"] = peaks
    merged.pop("matmul_peak", None)
    scen = dict(old.get("scenarios") or {})
    for name, result in (new.get("scenarios") or {}).items():
        if result.get("ok") or name not in scen:  # a failed re-run keeps the stored result
            scen[name] = result
    merged["scenarios"] = scen
    return merged
