"""Render a benchmark results document (see :mod:`.suite`) to ``BENCHMARKS.md`` and two PNG plots.

Every number in the Markdown comes from the JSON document: regenerate instead of editing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["render_markdown", "write_plots", "write_report"]


def _fmt(value: Any, spec: str = ".3f", none: str = "–") -> str:
    return none if value is None else format(value, spec)


def _labels(doc: dict[str, Any]) -> dict[str, str]:
    from .rows import ROWS

    return {**{name: row.label for name, row in ROWS.items()}, **{b["name"]: b["label"] for b in doc["backends"]}}


def _row_peak(doc: dict[str, Any], name: str) -> str | None:
    """Which matmul peak a row is compared with: its stored ``peak``, else the row table's."""
    from .rows import ROWS

    for b in doc["backends"]:
        if b["name"] == name:
            if "peak" in b:
                return b["peak"]
            if b.get("device") == "cuda":
                return None
    row = ROWS.get(name)
    return row.peak if row else "fp32"


def _peak_gflops(doc: dict[str, Any]) -> dict[str, float]:
    from .merge import matmul_peaks

    return {p: v["gflops"] for p, v in matmul_peaks(doc).items() if v.get("gflops")}


def _machine_section(doc: dict[str, Any]) -> list[str]:
    m, s, load = doc["machine"], doc["settings"], doc.get("load", {})
    pause = doc.get("pause", {})
    lines = [
        "## Machine and settings",
        "",
        f"- CPU: {m['cpu']} — {m['logical_cores']} logical / {m.get('physical_cores')} physical cores, "
        f"{m['memory_gb']} GiB RAM; GPU: {m.get('gpu') or 'none'}",
        f"- OS: {m['os']}; Python {m['python']}; torch {m['torch']}; onnxruntime {m.get('onnxruntime') or 'not installed'} "
        f"(providers: {', '.join(m.get('ort_providers') or []) or '–'}); OpenVINO {m.get('openvino') or 'not installed'}; "
        f"TensorRT {m.get('tensorrt') or 'not installed'}",
        f"- CPU features: {', '.join(m.get('cpu_flags') or []) or 'not recorded'}",
        f"- Threads: {m['threads']} (torch `set_num_threads`, ONNX Runtime `intra_op_num_threads`, OpenVINO "
        "`INFERENCE_NUM_THREADS`)",
        f"- Allocator: {m['allocator']}; took effect: {m['allocator_tuned']}",
        f"- Model: `{s['preset']}` preset, "
        + (f"weights of `{s['model']}`" if s.get("model") else f"random weights (seed {s['seed']})")
        + ", batch 1, "
        f"{doc['config']['in_channels']} channel(s)",
        f"- Timing: median of up to {s['repeats']} runs after {s['warmup']} warm-up run(s) "
        f"(fewer repeats where one run is long: about {s['max_job_s']:.0f} s per backend and size); "
        "each row and size in a fresh subprocess that opens its model file with `n3deploy.backends.load_backend`; peak RSS is that process's `ru_maxrss` "
        "(includes interpreter and library imports; the RSS before the first run is listed as base)",
        f"- Quiet machine: process {pause.get('pid')} paused (SIGSTOP) during all measurements: "
        f"{pause.get('paused')}; load average at start {_loadavg(load.get('loadavg_start'))}, "
        f"at end {_loadavg(load.get('loadavg_end'))} (1/5/15 min; the 1-min value decays slowly after pausing); "
        f"CPU busy in the half second before measuring: {_fmt(load.get('cpu_percent_start'), '.0f')}%",
        "- Other load: before each measurement the suite waits (up to "
        f"{s.get('quiet_wait_s', 0):.0f} s) for the CPU to go idle; the *other load* column is the CPU share "
        "other processes (e.g. test runs) used during that measurement (system busy time minus the "
        f"worker's own), and a measurement above {100 * s.get('contention_retry', 0):.0f}% is repeated once, "
        "keeping the quieter one",
        f"- Generated {doc['generated_at']}, total wall time {_fmt(doc.get('total_wall_s'), '.0f')} s",
        "",
        "Command(s) (a later `--update` run replaces the rows and breakdown it re-measured):" if doc.get("commands")
        else "Command:",
        "",
        "```",
        *(doc.get("commands") or [doc["command"] or "(not recorded)"]),
        "```",
        "",
    ]
    return lines


def _pct(share: Any) -> str:
    return "–" if share is None else f"{100 * share:.0f}%"


def _size(wh: Any) -> str:
    return f"{wh[0]}×{wh[1]}"


def _loadavg(value: Any) -> str:
    return "–" if not value else " / ".join(f"{v:.2f}" for v in value)


def _flops_section(doc: dict[str, Any]) -> list[str]:
    f = doc["flops_per_pixel"]
    return [
        "## Work per pixel and machine peak",
        "",
        "Analytic count (`n3deploy.benchmarking.flops.model_flops_per_pixel`, paper formulation, "
        "1 multiply-add = 2 FLOPs):",
        "",
        "| part | kFLOP / pixel |",
        "|---|---:|",
        f"| DnCNN convolutions | {f['dncnn'] / 1e3:.1f} |",
        f"| embedding + temperature CNNs | {f['embed_temp'] / 1e3:.1f} |",
        f"| KNN patch distances | {f['knn_distance'] / 1e3:.1f} |",
        f"| KNN selection (softmax rounds) | {f['knn_selection'] / 1e3:.1f} |",
        f"| KNN aggregation | {f['knn_aggregation'] / 1e3:.1f} |",
        f"| **total** | **{f['total'] / 1e3:.1f}** |",
        "",
        "GFLOP/s in the tables are this model count divided by the median latency, for every row "
        "(the static KNN folds the patch overlap into its weights and performs fewer aggregation "
        "multiply-adds than the paper formulation counts; the reference KNN performs more work in gathers). "
        "Each CPU row's *% of peak* compares it with the matmul peak of the precision its arithmetic runs in "
        "(FP32 rows and ONNX Runtime's FP16 graph, which computes in FP32, with the FP32 peak; BF16 rows with the "
        "BF16 peak):",
        "",
        *_peak_lines(doc),
        "",
    ]


def _peak_lines(doc: dict[str, Any]) -> list[str]:
    from .merge import matmul_peaks

    lines = []
    for precision, peak in matmul_peaks(doc).items():
        if not peak.get("gflops"):
            lines.append(f"- {precision.upper()} matmul peak: not measured ({peak.get('error', 'no result')})")
            continue
        lines.append(
            f"- Measured {precision.upper()} matmul peak ({peak.get('n')}³ `torch.matmul`, {peak.get('threads')} threads, "
            "best of 10, at the start and at the end of the measurements, the higher one): "
            f"**{_fmt(peak.get('gflops'), '.1f')} GFLOP/s** (start {_fmt(peak.get('start_gflops'), '.1f')}, "
            f"end {_fmt(peak.get('end_gflops'), '.1f')})"
        )
    return lines or ["- No matmul peak measured."]


def _results_section(doc: dict[str, Any]) -> list[str]:
    labels = _labels(doc)
    peaks = _peak_gflops(doc)
    lines = [
        "## Latency, throughput and memory",
        "",
        "| row | size (W×H) | MP | median s | runs | MP/s | GFLOP/s | % of peak (precision) | peak RSS MB | base RSS MB | GPU MB | other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    skipped = []
    for r in doc["results"]:
        size = f"{r['width']}×{r['height']}"
        if r["status"] != "ok":
            skipped.append(f"- {labels.get(r['backend'], r['backend'])} at {size}: {r['status']} — {r['note']}")
            continue
        which = _row_peak(doc, r["backend"])  # None: a GPU row, the CPU peaks say nothing about it
        share = f"{100 * r['gflops'] / peaks[which]:.0f} ({which.upper()})" if which in peaks else "–"
        lines.append(
            f"| {labels.get(r['backend'], r['backend'])} | {size} | {r['megapixels']:.3f} | {r['median_s']:.3f} | "
            f"{r['repeats']} | {r['mpix_per_s']:.3f} | {r['gflops']:.1f} | {share} | {r['peak_rss_mb']:.0f} | "
            f"{_fmt(r['base_rss_mb'], '.0f')} | {_fmt(r['gpu_mem_mb'], '.0f')} | {_pct(r.get('foreign_cpu_share'))} |"
        )
    lines.append("")
    unavailable = [b for b in doc["backends"] if not b["available"]]
    if unavailable:
        lines += ["Unavailable rows:", ""]
        lines += [f"- {b['label']} (`{b['name']}`): {b['reason']}" for b in unavailable]
        lines.append("")
    skipped = [s for s in skipped if "unavailable (" not in s]
    if skipped:
        lines += ["Skipped or failed:", "", *skipped, ""]
    lines += [
        "![time vs megapixels](docs/bench_time.png)",
        "",
        "![peak RSS vs megapixels](docs/bench_memory.png)",
        "",
    ]
    return lines


def _breakdown_section(doc: dict[str, Any]) -> list[str]:
    bd = doc.get("breakdown") or {}
    if not bd:
        return []
    lines = [
        f"## Where the PyTorch forward pass spends its time ({_size(doc['settings']['breakdown_size'])})",
        "",
        "`n3deploy.benchmarking.breakdown.forward_breakdown` (hooks around every `KNNAggregation`), "
        f"`{doc['settings']['preset']}` preset, median of {doc['settings']['breakdown_repeats']} runs after 1 warm-up "
        "(static first, then reference, in one fresh process):",
        "",
        "| KNN | total s | non-local s | non-local share | CNN s | process peak RSS so far MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for knn in ("static", "reference"):
        r = bd.get(knn)
        if not r:
            continue
        if not r.get("ok"):
            lines.append(f"| {knn} | failed: {r.get('error')} | | | | |")
            continue
        lines.append(
            f"| {knn} | {r['total_s']:.3f} | {r['nonlocal_s']:.3f} | {100 * r['nonlocal_share']:.1f}% | "
            f"{r['cnn_s']:.3f} | {r['peak_rss_mb']:.0f} |"
        )
    lines.append("")
    if bd.get("foreign_cpu_share") is not None:
        lines += [f"Other processes used {_pct(bd['foreign_cpu_share'])} of the CPU during the breakdown.", ""]
    if "speedup_total" in bd:
        lines += [
            f"Static vs reference KNN: **{bd['speedup_total']:.1f}× faster forward pass**, "
            f"{bd['speedup_nonlocal']:.1f}× faster non-local part.",
            "",
        ]
    return lines


def _denoiser_section(doc: dict[str, Any]) -> list[str]:
    den = doc.get("denoiser") or {}
    if not den:
        return []
    lines = [f"## The embedded API on a large photo ({den['width']}×{den['height']} RGB uint8)", ""]
    if not den.get("ok"):
        return lines + [f"Not measured: {den.get('error')}", ""]
    return lines + [
        f"`n3deploy.Denoiser(model.onnx).denoise(image)` in a fresh process: backend `{den['backend']}`, "
        f"the three channels one after the other, each in overlapping tiles of {den['tile'][0]}×{den['tile'][1]} "
        f"(overlap {den['overlap']} px): **{den['seconds']:.1f} s, peak RSS {den['peak_rss_mb']:.0f} MB** "
        f"(base {den['base_rss_mb']:.0f} MB; other load {_pct(den.get('foreign_cpu_share'))}).",
        "",
    ]


def _summary_section(doc: dict[str, Any]) -> list[str]:
    """At the breakdown size: each CPU row against the peak of its precision, and the rows' ratios."""
    w, h = doc["settings"].get("breakdown_size") or (481, 321)
    labels, peaks = _labels(doc), _peak_gflops(doc)
    rows = [r for r in doc["results"] if r["status"] == "ok" and (r["width"], r["height"]) == (w, h)
            and _row_peak(doc, r["backend"]) is not None]
    if not rows:
        return []
    rows.sort(key=lambda r: r["median_s"])
    fastest = rows[0]
    lines = [f"## Summary at {w}×{h}", "",
             f"CPU rows at {w}×{h}, fastest first, against the machine's matmul peak of each row's precision "
             "(model FLOPs of the paper formulation, see below) and against the fastest row:", "",
             "| row | median s | GFLOP/s | % of peak (precision) | × slower than fastest | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        which = _row_peak(doc, r["backend"])
        share = f"{100 * r['gflops'] / peaks[which]:.0f} ({which.upper()})" if which in peaks else "–"
        lines.append(f"| {labels.get(r['backend'], r['backend'])} | {r['median_s']:.3f} | {r['gflops']:.1f} | {share} | "
                     f"{r['median_s'] / fastest['median_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    lines.append("")
    return lines


def _scenario_sections(doc: dict[str, Any]) -> list[str]:
    """Every stored scenario, rendered by its own ``render`` (registry order, then any unknown ones)."""
    stored = doc.get("scenarios") or {}
    if not stored:
        return []
    from .scenarios import scenarios

    known = scenarios()
    lines: list[str] = []
    for name in [*(n for n in known if n in stored), *(n for n in stored if n not in known)]:
        entry = stored[name]
        title = entry.get("title") or name
        if not entry.get("ok"):
            lines += [f"## {title}", "", f"Not measured (`--scenarios {name}`): {entry.get('error', 'no result')}", ""]
        elif name not in known:
            lines += [f"## {title}", "", f"Stored results of scenario `{name}`, whose module is not installed here.", ""]
        else:
            lines += [known[name].render(entry["results"]).rstrip(), "",
                      f"Measured{_other_machine(entry)} in a fresh worker process in {entry.get('wall_s', 0):.0f} s "
                      f"(other load {_pct(entry.get('foreign_cpu_share'))}).", ""]
    return lines


def _other_machine(entry: dict[str, Any]) -> str:
    """`` on CPU (...)`` for a scenario result kept from another machine's run (``machine_cpu`` set), else ``""``."""
    if not entry.get("machine_cpu"):
        return ""
    why = f"; {entry['note']}" if entry.get("note") else ""
    return f" on {entry['machine_cpu']} (another machine than the sections above{why}; `{entry.get('command', '')}`)"


#: Hand-recorded development measurements appended to the report (path relative to the report).
APPENDIX = Path("benchmarks") / "knn_formulations.md"


def _gpu_section(doc: dict[str, Any]) -> list[str]:
    """A second results document measured on a GPU machine (its own machine and command)."""
    lines = [
        f"# On a GPU: {doc['machine'].get('gpu') or 'no GPU'}",
        "",
        "Measured on another machine than the sections above (the GPU is lent only to some sessions); "
        "regenerate there with the command below, then re-render here. GPU MB is the peak of PyTorch's "
        "own CUDA allocations (ONNX Runtime: device memory in use); GFLOP/s uses the same analytic FLOP count; "
        "the time includes the host-device copies of input and output.",
        "",
    ]
    body = _machine_section(doc) + _results_section(doc)
    body = [line for line in body if not line.startswith("![")]  # the plots show the CPU document
    return lines + [f"#{line}" if line.startswith("## ") else line for line in body]


def render_markdown(doc: dict[str, Any], appendix: str = "", gpu_doc: dict[str, Any] | None = None) -> str:
    """The whole ``BENCHMARKS.md`` text for a results document (plus a GPU document and ``appendix``)."""
    lines = [
        "# Benchmarks",
        "",
        "Generated from the JSON results by `n3deploy.benchmarking.report` (command below); do not edit by hand.",
        "",
    ]
    lines += _machine_section(doc)
    lines += _summary_section(doc)
    lines += _breakdown_section(doc)
    lines += _denoiser_section(doc)
    lines += _results_section(doc)
    lines += _flops_section(doc)
    lines += _scenario_sections(doc)
    if gpu_doc is not None:
        lines += _gpu_section(gpu_doc)
    if appendix.strip():
        lines += ["", appendix.strip()]
    return "\n".join(lines).rstrip() + "\n"


def write_plots(doc: dict[str, Any], plots_dir: Path) -> list[Path]:
    """``bench_time.png`` and ``bench_memory.png``: time and peak RSS vs megapixels per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    labels = _labels(doc)
    series: dict[str, list[dict[str, Any]]] = {}
    for r in doc["results"]:
        if r["status"] == "ok":
            series.setdefault(r["backend"], []).append(r)
    paths = []
    for key, ylabel, name in (("median_s", "median latency (s)", "bench_time.png"),
                              ("peak_rss_mb", "peak RSS (MB)", "bench_memory.png")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for backend, rows in series.items():
            rows = sorted(rows, key=lambda r: r["megapixels"])
            ax.plot([r["megapixels"] for r in rows], [r[key] for r in rows], marker="o", label=labels.get(backend, backend))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("image size (megapixels)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"N3Net {doc['settings']['preset']}, {doc['machine']['threads']} threads, {doc['machine']['cpu']}")
        ax.grid(True, which="both", alpha=0.3)
        if series:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = plots_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(
    doc: dict[str, Any], markdown_path: Path, plots_dir: Path, gpu_doc: dict[str, Any] | None = None
) -> list[Path]:
    """Write the Markdown and both plots; image links are relative to the Markdown file."""
    paths = write_plots(doc, plots_dir)
    appendix = markdown_path.parent / APPENDIX
    text = render_markdown(doc, appendix.read_text() if appendix.is_file() else "", gpu_doc)
    rel = os.path.relpath(plots_dir, markdown_path.parent).replace(os.sep, "/")
    text = text.replace("](docs/", f"]({rel}/")
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text(text)
    return [markdown_path, *paths]
