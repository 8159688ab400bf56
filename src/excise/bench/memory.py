"""Peak resident memory (RSS) of one method run, measured in-process.

How: a daemon thread samples ``psutil.Process().memory_info().rss`` every ``interval`` seconds while the
method runs (PyTorch kernels release the GIL, so the sampler keeps running during heavy compute), and
the kernel's high-water mark ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is read before and after.

Limits, stated in every report:

- RSS is the whole process: the loaded data, the original and reference models and the Python/torch
  runtime are included. ``delta_mb`` (peak minus the RSS when the method started) is the method's own
  footprint; ``peak_mb`` is what the machine had to hold.
- The sampler can miss a spike shorter than ``interval`` (5 ms by default). ``ru_maxrss`` is exact but
  is a lifetime maximum: it only tells us something when the method pushes the process above every
  earlier peak, in which case it replaces the sampled value (``exact=True``).
- Memory the allocator keeps after an earlier cell is reused without raising RSS, so a method that runs
  after a hungrier one can show a delta near zero; read deltas as lower bounds.
- GPU memory is not RSS; on CUDA use ``torch.cuda.max_memory_allocated`` instead (not measured here).
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType

import psutil

try:  # Unix only
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

_MB = 1024 * 1024


def _ru_maxrss_bytes() -> int | None:
    if resource is None:  # pragma: no cover
        return None
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value) if sys.platform == "darwin" else int(value) * 1024  # Linux reports KiB


class PeakRSS:
    """``with PeakRSS() as probe: ...`` then ``probe.peak_mb``, ``probe.delta_mb``, ``probe.exact``."""

    def __init__(self, interval: float = 0.005) -> None:
        if interval <= 0:
            raise ValueError(f"interval={interval!r} must be > 0 seconds")
        self.interval = interval
        self._process = psutil.Process()
        self.baseline = 0
        self.peak = 0
        self.exact = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ru_before: int | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = self._process.memory_info().rss
            if rss > self.peak:
                self.peak = rss

    def __enter__(self) -> PeakRSS:
        self._ru_before = _ru_maxrss_bytes()
        self.baseline = self.peak = self._process.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="excise-peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
        after = _ru_maxrss_bytes()
        if after is not None and self._ru_before is not None and after > self._ru_before:
            # The process set a new lifetime peak during the method: the kernel's number is exact.
            self.peak = max(self.peak, after)
            self.exact = True

    @property
    def peak_mb(self) -> float:
        return self.peak / _MB

    @property
    def baseline_mb(self) -> float:
        return self.baseline / _MB

    @property
    def delta_mb(self) -> float:
        return max(self.peak - self.baseline, 0) / _MB
