"""Timing and memory helpers: interleaved medians (so machine noise hits ours and the baseline alike)
and a resident-set sampler that records the peak RSS of each named phase."""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator

import psutil

MB = 1024 * 1024


class PeakRSS:
    """Samples the process's resident set every `interval` s and keeps the peak per phase.

    RSS is process-wide (it includes the loaded model) and the allocator may keep memory freed by an
    earlier phase, so compare phases of one case, and use `max_rss_mb()` for the whole process.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peaks, self._label = interval, {}, None
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            label = self._label
            if label is not None:
                rss = self._proc.memory_info().rss
                self.peaks[label] = max(self.peaks.get(label, 0), rss)

    @contextlib.contextmanager
    def phase(self, label: str) -> Iterator[None]:
        self._label = label
        rss = self._proc.memory_info().rss
        self.peaks[label] = max(self.peaks.get(label, 0), rss)
        try:
            yield
        finally:
            rss = self._proc.memory_info().rss
            self.peaks[label] = max(self.peaks.get(label, 0), rss)
            self._label = None

    def mb(self, label: str) -> float | None:
        return round(self.peaks[label] / MB, 1) if label in self.peaks else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def max_rss_mb() -> float:
    """Peak resident set of this process so far (ru_maxrss), in MiB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def interleaved(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1,
                rss: PeakRSS | None = None) -> dict[str, list[float]]:
    """Run each fn `warmup` times, then `repeats` rounds of all fns in turn; return wall times per name.

    Round-robin order means a burst of load from other processes lands on every contender.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(warmup):
        for name, fn in fns.items():
            with rss.phase(name) if rss else contextlib.nullcontext():
                fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            with rss.phase(name) if rss else contextlib.nullcontext():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))
