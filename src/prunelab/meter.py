"""Wall time and peak memory of named phases (calibration, scoring, surgery, ...).

Peak memory is the accelerator's peak allocation on CUDA, and on the CPU the process's peak
resident set since the phase began (Linux resets ``VmHWM`` through ``/proc/self/clear_refs``;
where that is not allowed the figure is the process peak so far, and says so). Resetting
``VmHWM`` also resets what ``getrusage`` reports, so the process-wide peak is kept here:
:func:`process_peak_rss_bytes`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


_peak_before_resets = 0


def _reset_peak_rss() -> bool:
    global _peak_before_resets
    _peak_before_resets = max(_peak_before_resets, _peak_rss_bytes() or 0)
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _status_bytes(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in bytes."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _peak_rss_bytes() -> int | None:
    return _status_bytes("VmHWM")


def current_rss_bytes() -> int:
    """Resident memory of the process now (0 where ``/proc`` is not available)."""
    return _status_bytes("VmRSS") or 0


def process_peak_rss_bytes() -> int:
    """Peak resident memory of the whole process so far, across phase resets."""
    import resource

    current = _peak_rss_bytes() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return max(_peak_before_resets, current)


class PhaseMeter:
    """Collects ``{phase: seconds}`` and ``{phase: peak bytes}``."""

    def __init__(self, device: torch.device):
        self.device = device
        self.wall_time_s: dict[str, float] = {}
        self.peak_memory_bytes: dict[str, int] = {}
        self.memory_kind = "cuda_max_allocated" if device.type == "cuda" else "rss_peak"

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Measure the enclosed block as phase ``name``."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif not _reset_peak_rss():
            self.memory_kind = "rss_process_peak"
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                peak = torch.cuda.max_memory_allocated(self.device)
            else:
                peak = _peak_rss_bytes() or 0
            self.wall_time_s[name] = time.perf_counter() - start
            self.peak_memory_bytes[name] = peak
