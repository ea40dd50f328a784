"""Batch denoising of many files: one job definition (:mod:`.job`), two engines.

* :class:`~n3deploy.batch.local_engine.LocalEngine`: in this process, one file after another;
* :class:`~n3deploy.batch.ray_engine.RayEngine`: an actor pool on Ray Data, on a local cluster
  sized to the machine or on an existing one (``ray start``, KubeRay).

Both run :func:`~n3deploy.batch.job.process_file` on every input, so they write the same images
and the same per-file records.
"""

from .job import DenoiseJob, DenoiseSettings, FileRecord, FileTask, JobSummary, list_inputs, plan_job, run_job
from .local_engine import LocalEngine

__all__ = [
    "DenoiseJob", "DenoiseSettings", "FileRecord", "FileTask", "JobSummary", "LocalEngine",
    "list_inputs", "plan_job", "run_job",
]
