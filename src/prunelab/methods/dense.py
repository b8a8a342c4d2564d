"""``dense``: no pruning, the reference row of every table."""

from __future__ import annotations

from typing import Any

from prunelab.methods.base import METHODS, PruneOutcome, PruningMethod


@METHODS.register("dense")
class Dense(PruningMethod):
    """Leaves the model untouched."""

    prunes = False

    def prune(self, run: Any, loaded: Any) -> PruneOutcome:
        return PruneOutcome(ratio_asked=0.0)
