"""The Ray Data engine: the same job on an actor pool, on a laptop or a cluster.

Pipeline (one Ray Data dataset, streamed)::

    from_items(tasks)            one row (input, output) per file, one block per row
      -> map_batches(_DenoiseActor, batch_size=1, concurrency=workers, num_cpus=threads[, num_gpus=1])
                                 each actor loads the Denoiser once, then per file: read + decode with
                                 n3deploy.imageio, denoise, atomic write, return the record
      -> iter_rows()             the driver receives small records only, never images

Why decode in the actor rather than ``read_images`` or ``read_binary_files``: ``read_images``
goes through its own Pillow path (16-bit TIFF, RGBA and the output format would not follow the
input the way :mod:`n3deploy.imageio` keeps them), and ``read_binary_files`` would ship every
file's bytes through the object store and need read tasks whose CPUs compete with the actors (on
a 2-core machine a pool using every CPU then stalls). Reading a file is cheap next to denoising
it, so each actor reads its own file: memory stays bounded by one image per actor, and Ray's
streaming executor feeds the pool as actors free up.

Fault tolerance comes from Ray: actors restart when their process dies (``max_restarts``) and
the file they were working on is retried (``max_task_retries``); an output is written under a
temporary name and renamed, so a retried file never leaves a half-written image. A file whose
worker died past every retry is counted as an errored block (``max_errored_blocks``) instead of
ending the job, and :func:`~n3deploy.batch.job.run_job` records it as failed.

Sizing (:func:`size_pool`): actors x threads per actor <= the cluster's CPUs; ``--backend
tensorrt`` on a cluster with GPUs gets one GPU per actor.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterator, Optional, Sequence

from ..errors import N3DeployError
from .job import DenoiseSettings, FileRecord, FileTask, make_denoiser, process_file

__all__ = ["RayEngine", "PoolSize", "size_pool", "MAX_TASK_RETRIES"]

MAX_TASK_RETRIES = 3  # a file whose worker dies this many more times is reported as failed
ENGINE_NAME = "ray"


@dataclass(frozen=True)
class PoolSize:
    """Actors in the pool, threads (and CPUs reserved) per actor, GPUs per actor."""

    workers: int
    threads: int
    gpus: int = 0


def _resolved_backend(settings: DenoiseSettings) -> str:
    if settings.backend != "auto":
        return settings.backend
    model: Any = settings.model
    if isinstance(model, str) and model.lower().startswith(("http://", "https://")):
        return "remote"
    from ..backends import backend_for_path
    from ..models import resolve_model

    if model is None:
        from ..assets import default_model_path

        model = default_model_path()
    return backend_for_path(resolve_model(model))


def size_pool(cpus: float, gpus: float, backend: str, workers: Optional[int], threads: Optional[int]) -> PoolSize:
    """Actors and threads for a cluster of ``cpus`` CPUs and ``gpus`` GPUs.

    CPU backends: ``workers x threads <= cpus``; given one of the two, the other fills the
    cluster; given neither, one thread per actor and one actor per CPU. ``tensorrt`` with GPUs:
    one actor per GPU (or ``workers``), one GPU and one CPU each.
    """
    cpus_i = max(1, int(cpus))
    if backend == "tensorrt" and gpus >= 1:
        n = workers or int(gpus)
        if n > gpus:
            raise N3DeployError(f"--workers {n} needs {n} GPUs for the tensorrt backend; the cluster has {int(gpus)}")
        return PoolSize(workers=n, threads=threads or 1, gpus=1)
    if workers is not None and workers < 1 or threads is not None and threads < 1:
        raise N3DeployError("--workers and --threads-per-worker must be at least 1")
    if workers is None and threads is None:
        threads = 1
    if workers is None:
        workers = max(1, cpus_i // int(threads or 1))
    if threads is None:
        threads = max(1, cpus_i // workers)
    if workers * threads > cpus_i:
        raise N3DeployError(
            f"--workers {workers} x --threads-per-worker {threads} = {workers * threads} CPUs, but the Ray cluster "
            f"has {cpus_i}: lower one of them (actors x threads <= cores, or the pool never fills)"
        )
    return PoolSize(workers=workers, threads=threads)


class _DenoiseActor:
    """One pool member: loads the model once, then denoises one file per call (``batch_size=1``)."""

    def __init__(self, settings: DenoiseSettings) -> None:
        import warnings

        from ..errors import NoiseLevelWarning

        warnings.simplefilter("ignore", NoiseLevelWarning)  # one per actor would flood the driver's log
        self.denoiser = make_denoiser(settings)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows: dict[str, list[Any]] = {}
        for inp, out in zip(batch["input"], batch["output"]):
            rec = asdict(process_file(self.denoiser, FileTask(str(inp), str(out)), engine=ENGINE_NAME))
            rec["error"] = rec["error"] or ""  # one column type in every block
            for key, value in rec.items():
                rows.setdefault(key, []).append(value)
        return rows


@dataclass
class RayEngine:
    """Run the job's files on a Ray Data actor pool.

    ``address``: ``None`` starts a local cluster of ``num_cpus`` CPUs (default: every core) and
    shuts it down at the end (if Ray is already initialised in this process, that cluster is
    used and left running); ``"auto"`` or ``"ray://host:10001"`` joins an existing cluster.
    ``workers`` / ``threads_per_worker``: see :func:`size_pool`.
    """

    address: Optional[str] = None
    workers: Optional[int] = None
    threads_per_worker: Optional[int] = None
    num_cpus: Optional[int] = None
    name: str = ENGINE_NAME
    pool: Optional[PoolSize] = None  # set by run()
    cluster_start_s: float = 0.0

    def _connect(self) -> bool:
        """Connect to (or start) a cluster; True when this call initialised Ray."""
        import time

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        if ray.is_initialized():
            return False
        t0 = time.perf_counter()
        if self.address is None:
            # address="local": always a new cluster, never one a `ray start` on this machine left running
            ray.init(address="local", num_cpus=self.num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     logging_level=logging.WARNING)
        else:
            ray.init(address=self.address, logging_level=logging.WARNING)
        self.cluster_start_s = time.perf_counter() - t0
        return True

    def run(self, tasks: Sequence[FileTask], settings: DenoiseSettings) -> Iterator[FileRecord]:
        try:
            import ray
            import ray.data
        except ImportError as exc:
            raise N3DeployError(f"--engine ray needs Ray Data ({exc}): pip install 'n3deploy[ray]'") from None
        started = self._connect()
        ctx = ray.data.DataContext.get_current()
        saved = (ctx.max_errored_blocks, ctx.enable_progress_bars)
        try:
            resources = ray.cluster_resources()
            backend = _resolved_backend(settings)
            if self.address is None:  # workers share this machine's environment: fail here, not in every actor
                from ..backends import get_backend
                from ..errors import BackendUnavailableError

                reason = get_backend(backend).probe()
                if reason is not None:
                    raise BackendUnavailableError(f"the {backend} backend cannot run here: {reason}")
            self.pool = size_pool(resources.get("CPU", 1), resources.get("GPU", 0), backend,
                                  self.workers, self.threads_per_worker)
            settings = replace(settings, threads=settings.threads or self.pool.threads)
            ctx.max_errored_blocks = -1  # a file that keeps killing its worker is reported, the job goes on
            ctx.enable_progress_bars = False  # the job's own bar counts files
            remote_args: dict[str, Any] = {"max_restarts": -1, "max_task_retries": MAX_TASK_RETRIES}
            if self.pool.gpus:
                remote_args["num_gpus"] = self.pool.gpus
            ds: Any = ray.data.from_items([asdict(t) for t in tasks], override_num_blocks=len(tasks))
            with warnings.catch_warnings():
                # max_restarts / max_task_retries have no named parameter yet: they go as **ray_remote_args
                warnings.simplefilter("ignore", DeprecationWarning)
                ds = ds.map_batches(
                    _DenoiseActor,
                    fn_constructor_kwargs={"settings": settings},
                    batch_size=1,
                    compute=ray.data.ActorPoolStrategy(size=self.pool.workers),
                    num_cpus=1 if self.pool.gpus else self.pool.threads,
                    **remote_args,
                )
            for row in ds.iter_rows():
                rec = FileRecord.from_dict(dict(row))
                rec.error = rec.error or None
                yield rec
        finally:
            ctx.max_errored_blocks, ctx.enable_progress_bars = saved
            if started:
                ray.shutdown()
