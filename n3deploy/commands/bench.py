"""``n3deploy bench``: latency, throughput, memory and FLOP efficiency of every available backend."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register", "add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options shared by ``n3deploy bench`` and ``runtime/bench.py``."""
    p.add_argument("--preset", default="paper", choices=["paper", "tiny"], help="model preset (random weights)")
    p.add_argument("--model", default=None, metavar="NAME|CKPT",
                   help="time this registry model or checkpoint (and its exports, built once and cached) instead of "
                        "random weights; --preset must be its preset")
    p.add_argument("--sizes", nargs="+", metavar="WxH",
                   help="image sizes, width x height, or 'none' (default: 256x256 481x321 1024x1024 1920x1080 3840x2160; "
                        "sizes predicted not to fit in memory are skipped)")
    p.add_argument("--backends", nargs="+", metavar="ROW",
                   help="subset of the rows: torch-static torch-reference torch-cpu-bf16 torch-cuda-fp32 torch-cuda-fp16 "
                        "ort-cpu-fp32 ort-cpu-fp16 ov-cpu-fp32 ov-cpu-bf16 ort-cuda-fp32 ort-cuda-fp16 tensorrt-fp16 "
                        "(default: all; unavailable ones are reported with the reason). The fp16/bf16 rows run the "
                        "precision plan (reduced-precision convolutions, FP32 non-local part)")
    p.add_argument("--scenarios", nargs="+", metavar="NAME",
                   help="also run these benchmark scenarios (n3deploy.benchmarking.scenarios), or 'all'; each runs in "
                        "its own process and is stored under the results' \"scenarios\" key (--update merges by name)")
    p.add_argument("--quick", action="store_true", help="short run: 256x256 and 481x321, 2 repeats, 1 breakdown repeat")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per backend and size (default 5, --quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs before timing (default 1)")
    p.add_argument("--max-job-s", type=float, default=90.0,
                   help="cut repeats so one backend and size takes about this long (default 90)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    p.add_argument("--reference-all-sizes", action="store_true",
                   help="also time the slow reference KNN above 481x321")
    p.add_argument("--no-breakdown", action="store_true", help="skip the non-local vs CNN breakdown at 481x321")
    p.add_argument("--breakdown-repeats", type=int, default=None, help="timed runs of the breakdown (default 3)")
    p.add_argument("--breakdown-size", default="481x321", metavar="WxH", help="size of the breakdown (default 481x321)")
    p.add_argument("--denoiser-size", default="1920x1080", metavar="WxH",
                   help="RGB uint8 image the Denoiser (tiled, ONNX Runtime FP32) is measured on, or 'none' (default 1920x1080)")
    p.add_argument("--matmul-n", type=int, default=2048, help="matrix size of the matmul peak measurement (default 2048)")
    p.add_argument("--budget-s", type=float, default=0.0, help="skip jobs predicted to overrun this total time")
    p.add_argument("--quiet-wait-s", type=float, default=90.0,
                   help="before each measurement wait up to this long for other processes to go idle (default 90)")
    p.add_argument("--pause-pid", type=int, default=None,
                   help="SIGSTOP this process (e.g. a training run) while measuring; always SIGCONT afterwards")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results.json"), help="results file")
    p.add_argument("--gpu-json", type=Path, default=Path("benchmarks/results_gpu.json"),
                   help="results measured on a GPU machine (e.g. --backends torch-cuda-fp32 torch-cuda-fp16 --json THIS there); "
                        "--write-benchmarks adds them as a section when the file exists")
    p.add_argument("--update", action="store_true",
                   help="merge into --json's existing results: re-measured rows and the breakdown replace the old ones")
    p.add_argument("--from-json", action="store_true", help="do not measure: render --json's existing results")
    p.add_argument("--write-benchmarks", action="store_true", help="also write BENCHMARKS.md and the PNG plots")
    p.add_argument("--markdown", type=Path, default=Path("BENCHMARKS.md"), help="Markdown report path")
    p.add_argument("--plots-dir", type=Path, default=Path("docs"), help="folder for bench_time.png / bench_memory.png")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark every available backend: latency, MP/s, peak RSS, GFLOP/s vs the matmul peaks",
        description=(
            "Benchmark N3Net on every available row (a registry backend in one precision: PyTorch FP32/BF16 "
            "and static/reference KNN, ONNX Runtime FP32/FP16 on CPU/CUDA, OpenVINO FP32/BF16, TensorRT FP16) "
            "and image size, each in a fresh process, against the machine's FP32 and BF16 matmul peaks; plus "
            "the benchmark scenarios asked for with --scenarios. Writes JSON results; --write-benchmarks "
            "regenerates BENCHMARKS.md and docs/bench_*.png.\n\n"
            "examples:\n"
            "  n3deploy bench --quick\n"
            "  n3deploy bench --pause-pid $(cat runs/default/pid) --write-benchmarks\n"
            "  n3deploy bench --sizes none --no-breakdown --denoiser-size none --scenarios all --update\n"
            "  n3deploy bench --from-json --write-benchmarks"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run, prog_name="n3deploy bench")


def settings_from_args(args: argparse.Namespace, command: str):
    from ..benchmarking.rows import ROWS
    from ..benchmarking.settings import DEFAULT_SIZES, QUICK_SIZES, BenchSettings, parse_size

    if args.sizes == ["none"]:
        sizes: tuple[tuple[int, int], ...] = ()
    elif args.sizes:
        sizes = tuple(parse_size(s) for s in args.sizes)
    else:
        sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    settings = BenchSettings(
        preset=args.preset,
        model=args.model,
        sizes=sizes,
        backends=tuple(args.backends) if args.backends else tuple(ROWS),
        repeats=args.repeats if args.repeats is not None else (2 if args.quick else 5),
        warmup=args.warmup,
        max_job_s=args.max_job_s,
        threads=args.threads,
        breakdown=not args.no_breakdown,
        breakdown_repeats=args.breakdown_repeats if args.breakdown_repeats is not None else (1 if args.quick else 3),
        breakdown_size=parse_size(args.breakdown_size),
        denoiser_size=None if args.denoiser_size == "none" or args.quick else parse_size(args.denoiser_size),
        matmul_n=args.matmul_n,
        budget_s=args.budget_s,
        quiet_wait_s=args.quiet_wait_s,
        pause_pid=args.pause_pid,
        scenarios=tuple(args.scenarios or ()),
        quick=args.quick,
        command=command,
    )
    unknown = [b for b in settings.backends if b not in ROWS]
    if unknown:
        raise SystemExit(f"unknown benchmark row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if settings.scenarios and "all" not in settings.scenarios:
        from ..benchmarking.scenarios import scenarios

        known = scenarios()
        missing = [n for n in settings.scenarios if n not in known]
        if missing:
            raise SystemExit(f"unknown benchmark scenario(s) {', '.join(missing)}; choose from all, {', '.join(known)}")
    if args.reference_all_sizes:
        settings.reference_max_pixels = 1 << 62
    return settings


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    import json

    from ..benchmarking.report import write_report
    from ..benchmarking.machine import machine_info
    from ..benchmarking.merge import machine_mismatch, merge_results
    from ..benchmarking.suite import command_line, run_suite
    from ..fileio import atomic_path

    if args.from_json:
        doc = json.loads(args.json.read_text())
    else:
        argv = sys.argv[1:] if argv is None else argv
        prog = getattr(args, "prog_name", "n3deploy bench")
        if prog == "n3deploy bench" and argv[:1] == ["bench"]:
            argv = argv[1:]
        settings = settings_from_args(args, command_line(prog, argv))
        if args.update and args.json.exists():
            old = json.loads(args.json.read_text())
            mismatch = machine_mismatch(old.get("machine") or {}, machine_info(settings.resolved_threads()))
            if mismatch:
                print(f"error: {args.json} was measured on another machine ({mismatch}); --update would mix the "
                      "two in one report: run without --update to measure everything here, or pass another --json",
                      file=sys.stderr)
                return 2
            doc = merge_results(old, run_suite(settings, json_path=args.json.with_suffix(".partial.json")))
            with atomic_path(args.json) as tmp:
                tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
            args.json.with_suffix(".partial.json").unlink(missing_ok=True)
        else:
            doc = run_suite(settings, json_path=args.json)
        print(f"results: {args.json}")
    if args.write_benchmarks:
        gpu_doc = None
        if args.gpu_json is not None and args.gpu_json.is_file() and args.gpu_json.resolve() != args.json.resolve():
            gpu_doc = json.loads(args.gpu_json.read_text())
        for path in write_report(doc, args.markdown, args.plots_dir, gpu_doc):
            print(f"wrote {path}")
    return 0
