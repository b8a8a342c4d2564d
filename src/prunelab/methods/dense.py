"""``dense``: no pruning, the reference row of every table."""

from __future__ import annotations

from prunelab.methods import PruningMethod, register


@register("dense")
class Dense(PruningMethod):
    """Leaves the model untouched."""

    removes = "nothing"
