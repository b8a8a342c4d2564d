"""Speed-up ratios with their uncertainty, from timings of two models taken interleaved.

Between-run noise on a shared machine (about 10% on 2 CPU cores) hides differences smaller
than itself, so a speed-up is measured as pairs: the reference and the candidate are timed
one after the other, repeat after repeat (A B, B A, A B, ...), and each repeat gives one
ratio ``reference / candidate`` under the same machine state. The speed-up is the geometric
mean of those paired ratios; its confidence interval is the studentised (bootstrap-t)
bootstrap over the repeats, resampling whole pairs, so drift that hits both models alike
cancels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from prunelab.errors import PrunelabError


@dataclass(frozen=True)
class RatioInterval:
    """A speed-up (reference time / candidate time) and its bootstrap confidence interval."""

    ratio: float
    low: float
    high: float
    confidence: float
    repeats: int


#: Bounds of an interval's log-ratio (e^50: far beyond any measurable speed-up).
_MAX_LOG_RATIO = 50.0


def paired_ratio_interval(reference: Sequence[float], candidate: Sequence[float],
                          confidence: float = 0.95, resamples: int = 2000,
                          seed: int = 0) -> RatioInterval:
    """Geometric-mean ratio ``reference[i] / candidate[i]`` with a bootstrap-t interval.

    ``reference[i]`` and ``candidate[i]`` must come from the same repeat of an interleaved
    measurement (:func:`interleaved_times`).
    """
    if len(reference) != len(candidate):
        raise PrunelabError(f"Paired timings need as many reference as candidate repeats, got "
                            f"{len(reference)} and {len(candidate)}")
    if len(reference) < 2:
        raise PrunelabError("A confidence interval needs at least 2 paired repeats")
    if not 0.0 < confidence < 1.0:
        raise PrunelabError(f"confidence must be in (0, 1), got {confidence}")
    if min(*reference, *candidate) <= 0:
        raise PrunelabError("Timings must be positive")
    logs = torch.tensor([math.log(r / c) for r, c in zip(reference, candidate)],
                        dtype=torch.float64)
    n, mean, spread = len(logs), logs.mean(), logs.std()
    if spread == 0:  # every repeat gave the same ratio
        point = math.exp(mean.item())
        return RatioInterval(point, point, point, confidence, n)
    generator = torch.Generator().manual_seed(seed)
    samples = logs[torch.randint(n, (resamples, n), generator=generator)]
    # Studentised resamples: the percentile bootstrap of a mean covers too rarely at the
    # 10-30 repeats a speed measurement affords (about 92% for a nominal 95% at 20)
    t = (samples.mean(dim=1) - mean) / (samples.std(dim=1) / n ** 0.5)
    tail = (1.0 - confidence) / 2
    t_low, t_high = torch.nanquantile(t[t.isfinite()],
                                      torch.tensor([tail, 1.0 - tail], dtype=torch.float64))
    error = spread / n ** 0.5
    # With few, wildly spread repeats (timings of a descheduled process) a near-degenerate
    # resample makes t huge: the bound is then "unbounded", kept finite for JSON
    low, high = ((mean - t * error).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO).item()
                 for t in (t_high, t_low))
    return RatioInterval(math.exp(mean.item()), math.exp(low), math.exp(high), confidence, n)


def interleaved_times(calls: dict[str, Callable[[], float]], warmup: int,
                      repeats: int) -> dict[str, list[float]]:
    """Seconds of each call per repeat, the calls taking turns within every repeat.

    Each call runs the measured work once and returns the seconds it took. The order
    alternates from one repeat to the next (A B, then B A), so neither model always runs on
    a cache the other warmed. Every call is run ``warmup`` times first, untimed.
    """
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            times[name].append(calls[name]())
    return times
