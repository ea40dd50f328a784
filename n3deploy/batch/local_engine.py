"""The in-process engine: one :class:`~n3deploy.denoiser.Denoiser`, one file after another."""

from __future__ import annotations

from typing import Iterator, Sequence

from .job import DenoiseSettings, FileRecord, FileTask, make_denoiser, process_file

__all__ = ["LocalEngine"]


class LocalEngine:
    """Denoise every task in this process (the model is loaded once, before the first file)."""

    name = "local"

    def run(self, tasks: Sequence[FileTask], settings: DenoiseSettings) -> Iterator[FileRecord]:
        denoiser = make_denoiser(settings)
        for task in tasks:
            yield process_file(denoiser, task, engine=self.name)
