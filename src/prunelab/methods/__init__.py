"""Pruning methods, one file each, registered in :data:`METHODS` by name."""

from prunelab.methods.base import METHODS, PruneOutcome, PruningMethod
from prunelab.methods import dense  # noqa: F401  (registers the built-in methods)

__all__ = ["METHODS", "PruneOutcome", "PruningMethod"]
