"""`--set run.profile=true`: where a run's time goes, written under its run directory's profile/.

- fit_trace.json: a torch.profiler trace of training steps PROFILED_STEPS (after WAIT + WARMUP steps that
  are not recorded: the first steps allocate and warm caches), for chrome://tracing or ui.perfetto.dev;
- fit.txt, sample.txt, evaluate.txt: per-operator tables of those steps, of the final sampling and of the
  evaluation, sorted by their own time (CUDA time on a GPU), with FLOPs where torch counts them.

A profiled run's metrics are those of the same run unprofiled; its wall times are not.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

WAIT, WARMUP, PROFILED_STEPS = 1, 1, 3
ROWS = 40
"""Operators per table."""


class Profiler:
    """Profiles a run's phases when `out` is a directory, and does nothing when it is None."""

    def __init__(self, out: Path | None):
        self.out = out
        self._fit = None

    def _profile(self, **kwargs):
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        return torch.profiler.profile(activities=activities, record_shapes=True, with_flops=True, **kwargs)

    def _table(self, prof, name: str) -> None:
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"{name}.txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=ROWS) + "\n")

    @contextmanager
    def fit(self):
        """Around the fit: `step()` after each training step moves the profiler's schedule on."""
        if self.out is None:
            yield
            return

        def ready(prof) -> None:
            self._table(prof, "fit")
            prof.export_chrome_trace(str(self.out / "fit_trace.json"))

        schedule = torch.profiler.schedule(wait=WAIT, warmup=WARMUP, active=PROFILED_STEPS, repeat=1)
        with self._profile(schedule=schedule, on_trace_ready=ready) as prof:
            self._fit = prof
            try:
                yield
            finally:
                self._fit = None

    def step(self) -> None:
        if self._fit is not None:
            self._fit.step()

    def phase(self, name: str):
        """Around one whole phase (sampling, evaluation): its per-operator table."""
        if self.out is None:
            return nullcontext()
        return self._phase(name)

    @contextmanager
    def _phase(self, name: str):
        with self._profile() as prof:
            yield
        self._table(prof, name)
