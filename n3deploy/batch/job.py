"""A batch denoising job, independent of the engine that runs it.

One module decides *what* a job does, so that every engine (in-process, Ray Data) produces the
same images and the same records:

* :func:`list_inputs` expands folders to the images they hold (sorted), :func:`output_path`
  names each output (``OUT/<stem><suffix><ext>``: format and bit depth follow the input);
* :func:`plan_job` skips inputs whose output exists and is at least as new as the input (unless
  ``overwrite``), so a rerun of a killed job resumes where it stopped;
* :func:`process_file` reads, denoises and writes one file atomically (temporary name, then
  rename: a killed job never leaves a half-written image) and turns any failure into a
  ``failed`` record with its reason instead of stopping the job;
* :func:`run_job` streams the engine's records into a JSON-lines report (written atomically,
  default ``OUT/denoise_report.jsonl``), drives a progress bar (done / failed / skipped,
  images/s) and returns a :class:`JobSummary`; files an engine never reported (a worker that
  died past its retries) are recorded as failed, never silently lost.

Engines implement :class:`Engine`: ``run(tasks, settings)`` yields one :class:`FileRecord` per
task, in any order.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol, Sequence

from ..errors import InvalidImageError

__all__ = [
    "DenoiseSettings", "DenoiseJob", "FileTask", "FileRecord", "JobSummary", "Engine",
    "list_inputs", "output_path", "plan_job", "make_denoiser", "process_file", "run_job",
    "REPORT_NAME", "STATUSES",
]

REPORT_NAME = "denoise_report.jsonl"
STATUSES = ("done", "failed", "skipped")


@dataclass(frozen=True)
class DenoiseSettings:
    """How each worker builds its :class:`~n3deploy.denoiser.Denoiser` (the same for every engine).

    ``threads``: CPU threads of one model (ONNX Runtime / OpenVINO intra-op threads, PyTorch
    ``set_num_threads``); ``None`` keeps the backend's default.
    """

    model: Optional[str] = None
    backend: str = "auto"
    precision: Optional[str] = None
    tile: Optional[int] = None
    overlap: Optional[int] = None
    threads: Optional[int] = None


@dataclass(frozen=True)
class DenoiseJob:
    """Inputs (files or folders), the output folder and what to do with existing outputs."""

    inputs: tuple[Path, ...]
    outdir: Path
    settings: DenoiseSettings = field(default_factory=DenoiseSettings)
    suffix: str = ""
    overwrite: bool = False
    report: Optional[Path] = None  # default: outdir / REPORT_NAME
    progress: bool = True

    @property
    def report_path(self) -> Path:
        return self.report if self.report is not None else self.outdir / REPORT_NAME


@dataclass(frozen=True)
class FileTask:
    """One input and the output it becomes (plain strings: cheap to ship to workers)."""

    input: str
    output: str


@dataclass
class FileRecord:
    """What happened to one input. ``status`` is one of :data:`STATUSES`."""

    input: str
    output: str
    status: str
    error: Optional[str] = None
    seconds: float = 0.0
    engine: str = ""
    worker: str = ""  # host:pid of the process that denoised it
    pid: int = 0
    peak_rss_mb: float = 0.0  # peak resident memory of that process so far
    finished_at: float = 0.0  # unix time
    sigma_estimate: Optional[float] = None  # the input's noise level, 0-255 scale (n3deploy.estimate_noise)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "FileRecord":
        names = cls.__dataclass_fields__
        return cls(**{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items() if k in names})


@dataclass
class JobSummary:
    """Counts of one job and where its report went."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    report: Optional[Path] = None
    interrupted: bool = False
    planned: int = 0  # inputs the job was given (more than ``total`` when interrupted)
    records: list[FileRecord] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.done + self.failed + self.skipped

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self, engine: str) -> str:
        state = "interrupted: " if self.interrupted else ""
        return (
            f"{state}{self.done} denoised, {self.failed} failed, {self.skipped} skipped of {max(self.planned, self.total)} file(s) "
            f"in {self.seconds:.1f} s ({self.images_per_s:.2f} images/s, engine {engine}); report: {self.report}"
        )


class Engine(Protocol):
    """Runs tasks; yields one record per task (any order)."""

    name: str

    def run(self, tasks: Sequence[FileTask], settings: DenoiseSettings) -> Iterator[FileRecord]: ...


# ------------------------------------------------------------------ planning
def list_inputs(inputs: Iterable[Path]) -> list[Path]:
    """Files as given and the images inside folders (sorted by name, by image suffix)."""
    from ..imageio import IMAGE_SUFFIXES

    files: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            files += sorted(f for f in item.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                            and not f.name.startswith("."))
        elif item.is_file():
            files.append(item)
        else:
            raise InvalidImageError(f"{item}: no such file or folder")
    if not files:
        raise InvalidImageError("no images found in the inputs")
    return files


def output_path(path: Path, outdir: Path, suffix: str = "") -> Path:
    """``outdir/<stem><suffix><ext>``: the output keeps the input's format."""
    return outdir / f"{path.stem}{suffix}{path.suffix}"


def _is_current(inp: Path, out: Path) -> bool:
    try:
        return out.stat().st_mtime >= inp.stat().st_mtime
    except OSError:
        return False


def plan_job(job: DenoiseJob) -> tuple[list[FileTask], list[FileRecord]]:
    """The tasks still to run and a ``skipped`` record for each input whose output is current.

    Raises :class:`~n3deploy.errors.InvalidImageError` when two inputs would write the same
    output or an output would replace its own input.
    """
    files = list_inputs(job.inputs)
    tasks: list[FileTask] = []
    skipped: list[FileRecord] = []
    seen: dict[Path, Path] = {}
    for inp in files:
        out = output_path(inp, job.outdir, job.suffix)
        key = out.resolve()
        if key == inp.resolve():
            raise InvalidImageError(f"{inp}: the output would replace the input; choose another -o folder or --suffix")
        if key in seen:
            raise InvalidImageError(f"{seen[key]} and {inp} would both be written to {out}; use separate runs or --suffix")
        seen[key] = inp
        if not job.overwrite and _is_current(inp, out):
            skipped.append(FileRecord(str(inp), str(out), "skipped", error="output is newer than the input",
                                      finished_at=time.time()))
        else:
            tasks.append(FileTask(str(inp), str(out)))
    return tasks, skipped


# ------------------------------------------------------------------ one file
def make_denoiser(settings: DenoiseSettings):
    """The :class:`~n3deploy.denoiser.Denoiser` every engine uses, with ``settings.threads`` applied."""
    from ..backends import backend_for_path, is_url
    from ..denoiser import Denoiser
    from ..models import resolve_model

    opts: dict[str, Any] = {}
    model: Any = settings.model
    if settings.threads:  # the CPU backends take threads=; a server or a GPU engine does not
        name = settings.backend
        if name == "auto":
            if model is None:
                from ..assets import default_model_path

                model = default_model_path()
            if not is_url(str(model)):
                name = backend_for_path(resolve_model(model))
        if name in ("onnxruntime", "openvino", "torch"):
            opts["threads"] = settings.threads
    return Denoiser(model, backend=settings.backend, tile=settings.tile, overlap=settings.overlap,
                    precision=settings.precision, **opts)


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024.0


def process_file(denoiser: Any, task: FileTask, engine: str = "") -> FileRecord:
    """Read, denoise and atomically write one file; any failure becomes a ``failed`` record."""
    from ..imageio import read_image, write_image

    t0 = time.perf_counter()
    status, error, sigma_estimate = "done", None, None
    try:
        image = read_image(task.input)
        sigma_estimate = _sigma_estimate(image)
        write_image(task.output, denoiser.denoise(image))
    except Exception as exc:  # one bad file never stops the job: it is reported with its reason
        status = "failed"
        error = str(exc) if isinstance(exc, InvalidImageError) else f"{type(exc).__name__}: {exc}"
    return FileRecord(
        task.input, task.output, status, error=error, seconds=round(time.perf_counter() - t0, 4), engine=engine,
        worker=f"{socket.gethostname()}:{os.getpid()}", pid=os.getpid(), peak_rss_mb=round(_peak_rss_mb(), 1),
        finished_at=time.time(), sigma_estimate=sigma_estimate,
    )


def _sigma_estimate(image: Any) -> Optional[float]:
    """The image's estimated noise sigma (0-255 scale), ``None`` when it cannot be estimated."""
    from ..noise import estimate_noise

    try:
        return round(estimate_noise(image), 2)
    except InvalidImageError:
        return None


# ------------------------------------------------------------------ the job
def _remove_stale_temporaries(tasks: Sequence[FileTask]) -> None:
    """Delete temporaries a killed run left beside the outputs it was writing (``.NAME.*.tmp``)."""
    for task in tasks:
        out = Path(task.output)
        if out.parent.is_dir():
            for tmp in out.parent.glob(f".{out.name}.*.tmp"):
                try:
                    tmp.unlink()
                except OSError:
                    pass


def run_job(
    job: DenoiseJob,
    engine: Engine,
    *,
    on_record: Optional[Callable[[FileRecord], None]] = None,
) -> JobSummary:
    """Plan ``job``, run the remaining tasks on ``engine``, write the report, return the counts.

    ``on_record`` is called with every record as it arrives (skipped ones first).
    A ``KeyboardInterrupt`` ends the job early with the records received so far (``interrupted``).
    """
    from tqdm import tqdm

    from ..fileio import atomic_path

    tasks, skipped = plan_job(job)
    job.outdir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries([*tasks, FileTask("", str(job.report_path))])  # a killed run's images and report
    summary = JobSummary(report=job.report_path, planned=len(tasks) + len(skipped))
    pending = {t.input: t for t in tasks}
    t0 = time.perf_counter()
    bar = tqdm(total=len(tasks) + len(skipped), desc=f"denoise [{engine.name}]", unit="img", disable=not job.progress,
               dynamic_ncols=True)
    with atomic_path(job.report_path) as tmp, open(tmp, "w", encoding="utf-8") as report:

        def record(rec: FileRecord) -> None:
            setattr(summary, rec.status, getattr(summary, rec.status) + 1)
            summary.records.append(rec)
            report.write(rec.to_json() + "\n")
            report.flush()
            if on_record is not None:
                on_record(rec)
            bar.update(1)
            elapsed = time.perf_counter() - t0
            bar.set_postfix(done=summary.done, failed=summary.failed, skipped=summary.skipped,
                            rate=f"{summary.done / elapsed if elapsed > 0 else 0:.2f} img/s", refresh=False)

        for rec in skipped:
            record(rec)
        try:
            if tasks:
                records = engine.run(tasks, job.settings)
                try:
                    for rec in records:
                        if pending.pop(rec.input, None) is None:
                            continue  # a retried file reported twice: keep the first record
                        record(rec)
                finally:
                    close = getattr(records, "close", None)
                    if close is not None:
                        close()  # let the engine release its workers / cluster now, not at garbage collection
            for task in pending.values():  # never reported: its worker died past every retry
                record(FileRecord(task.input, task.output, "failed", engine=engine.name, finished_at=time.time(),
                                  error="no result: the worker processing it failed repeatedly"))
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            bar.close()
            summary.seconds = time.perf_counter() - t0
    return summary
