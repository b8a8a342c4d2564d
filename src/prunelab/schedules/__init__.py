"""Schedules: how a target ratio is spread over blocks and modules."""

from prunelab.schedules import (  # noqa: F401  (registration)
    block,
    dynamic,
    explicit,
    global_,
    uniform,
)
from prunelab.schedules.base import SCHEDULES, Schedule
from prunelab.schedules.pools import Pool, build_pools

__all__ = ["SCHEDULES", "Pool", "Schedule", "build_pools"]
