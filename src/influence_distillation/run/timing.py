"""What a run actually took: wall time and peak memory per stage."""

from __future__ import annotations

import contextlib
import logging
import resource
import time
from collections.abc import Iterator

import torch

from influence_distillation.run.guards import note_stage

log = logging.getLogger(__name__)


class StageTimer:
    """Wall time of each stage, and the process's peak resident memory when it ended (the peak so far: a stage that
    needs more than the ones before it shows up as a step). Once `device` is a GPU (set when the model is loaded), also
    each stage's own peak of allocated memory on it (the allocator's peak is reset when a stage starts)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_gib: dict[str, float] = {}
        self.gpu_peak_gib: dict[str, float] = {}
        self.device: torch.device | None = None

    def watch(self, device: torch.device) -> None:
        """Measure GPU memory on `device` from now on (the model's device, once it is loaded)."""
        self.device = torch.device(device)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        log.info("stage %s: started", stage)
        if self._on_gpu():
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            note_stage(exc, stage)
            raise
        if self._on_gpu():  # the first stage's peak counts from CUDA's start
            torch.cuda.synchronize(self.device)
            self.gpu_peak_gib[stage] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
        self.seconds[stage] = round(time.perf_counter() - start, 3)
        self.peak_gib[stage] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB on Linux
        log.info("stage %s: %.1f s", stage, self.seconds[stage])

    def _on_gpu(self) -> bool:
        return self.device is not None and self.device.type == "cuda"
