"""Magnitude (the FLAP tables' mag_sp): ``||W[:, j]||_2`` of the output projections.

Scores an o_proj / down_proj input channel by its weight norm, and a head by the sum over its
channels; no calibration data.
"""

from __future__ import annotations

from prunelab.calibration.runner import LayerStats
from prunelab.methods import NoParams, PruningMethod, UnitScores, register
from prunelab.models.adapters import LayerAdapter


@register("mag_sp")
class MagnitudeSP(PruningMethod):
    """Magnitude structured pruning."""

    Params = NoParams

    def score_block(self, index: int, layer: LayerAdapter, stats: LayerStats,
                    comparable: bool) -> UnitScores:
        attn = layer.o_proj.weight.detach().double().cpu().norm(dim=0)
        mlp = layer.down_proj.weight.detach().double().cpu().norm(dim=0)
        return UnitScores(attn.view(layer.geometry.num_heads, -1).sum(1), mlp)
