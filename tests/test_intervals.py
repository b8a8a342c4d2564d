"""Speed-up intervals: the paired ratio by hand, the bootstrap's coverage, interleaved order."""

from __future__ import annotations

import math

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.eval.intervals import interleaved_times, paired_ratio_interval


def test_ratio_is_the_geometric_mean_of_paired_ratios():
    reference, candidate = [2.0, 3.0, 8.0], [1.0, 3.0, 2.0]  # ratios 2, 1, 4
    interval = paired_ratio_interval(reference, candidate)
    assert interval.ratio == pytest.approx(2.0)  # (2 * 1 * 4) ** (1 / 3)
    assert interval.low < interval.ratio < interval.high
    assert interval.repeats == 3 and interval.confidence == 0.95
    same = paired_ratio_interval([1.0, 1.5, 2.0], [0.5, 0.75, 1.0])  # drift cancels in pairs
    assert same.ratio == pytest.approx(2.0) and same.low == pytest.approx(2.0) \
        and same.high == pytest.approx(2.0)


def test_interval_covers_the_true_ratio_in_about_95_percent_of_seeded_trials():
    true_ratio, repeats, trials = 1.4, 20, 400
    generator = torch.Generator().manual_seed(1234)
    covered = 0
    for trial in range(trials):
        drift = torch.randn(repeats, generator=generator) * 0.15  # machine state, shared
        noise = torch.randn(2, repeats, generator=generator) * 0.05  # each call's own jitter
        reference = (drift + noise[0]).exp().tolist()
        candidate = ((drift + noise[1]).exp() / true_ratio).tolist()
        interval = paired_ratio_interval(reference, candidate, seed=trial)
        covered += interval.low <= true_ratio <= interval.high
    assert 0.93 <= covered / trials <= 0.97, covered / trials


def test_interval_narrows_with_more_repeats():
    generator = torch.Generator().manual_seed(0)
    widths = []
    for repeats in (8, 128):
        noise = torch.randn(2, repeats, generator=generator) * 0.1
        interval = paired_ratio_interval(noise[0].exp().tolist(), noise[1].exp().tolist())
        widths.append(math.log(interval.high / interval.low))
    assert widths[1] < widths[0] / 2


def test_wildly_spread_repeats_give_a_wide_finite_interval():
    """Timings of a descheduled process (seen on a loaded CI machine) overflowed exp()."""
    reference = [0.010030553, 0.002118915, 0.009838082, 0.002111981]
    candidate = [0.002149732, 0.009843292, 0.002172345, 0.009846759]
    interval = paired_ratio_interval(reference, candidate)
    assert math.isfinite(interval.high) and interval.low > 0
    assert interval.low <= interval.ratio <= interval.high


@pytest.mark.parametrize("reference, candidate, message", [
    ([1.0, 2.0], [1.0], "as many"),
    ([1.0], [1.0], "at least 2"),
    ([1.0, 0.0], [1.0, 1.0], "positive"),
])
def test_bad_timings_are_refused(reference, candidate, message):
    with pytest.raises(PrunelabError, match=message):
        paired_ratio_interval(reference, candidate)


def test_calls_take_turns_in_alternating_order_after_warmup():
    order = []

    def call(name):
        order.append(name)
        return float(len(order))

    times = interleaved_times({"a": lambda: call("a"), "b": lambda: call("b")}, warmup=1,
                              repeats=3)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert times == {"a": [3.0, 6.0, 7.0], "b": [4.0, 5.0, 8.0]}
