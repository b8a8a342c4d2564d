"""Schedules: how a target ratio is spread over blocks and modules.

Each schedule module registers itself in :data:`prunelab.registry.SCHEDULES`; the registry
imports this package (and so every schedule) the first time a schedule name is looked up.
"""

from prunelab.schedules import (  # noqa: F401  (registration)
    block,
    dynamic,
    explicit,
    global_,
    uniform,
)
from prunelab.schedules.base import Schedule
from prunelab.schedules.pools import Pool, build_pools

__all__ = ["Pool", "Schedule", "build_pools"]
