"""Pruning methods, one file each, registered in :data:`METHODS` by name."""

from prunelab.methods import baselines, bip, dense, flap  # noqa: F401  (registers the built-ins)
from prunelab.methods.base import METHODS, PruneOutcome, PruningMethod

__all__ = ["METHODS", "PruneOutcome", "PruningMethod"]
