"""Pruning methods, one file each, registered in :data:`METHODS` by name."""

from prunelab.methods import (  # noqa: F401  (registers the built-ins)
    baselines,
    bip,
    dense,
    flap,
    interaction,
)
from prunelab.methods.base import METHODS, PruneOutcome, PruningMethod

__all__ = ["METHODS", "PruneOutcome", "PruningMethod"]
