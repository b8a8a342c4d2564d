"""Schedules: how a target ratio is spread over blocks and modules."""

from prunelab.schedules import block, explicit, global_, uniform  # noqa: F401  (registration)
from prunelab.schedules.base import SCHEDULES, Schedule
from prunelab.schedules.pools import Pool, build_pools

__all__ = ["SCHEDULES", "Pool", "Schedule", "build_pools"]
