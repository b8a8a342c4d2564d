"""Wanda-sp (the FLAP tables' baseline): ``mean_i |W[i, j]| * ||X_j||_2`` per channel.

Scores an o_proj / down_proj input channel, and a head by the sum over its channels. Each
block is calibrated on the outputs of the already-pruned previous blocks (sequential); no
bias compensation. Reference calibration: C4, 128 samples.
"""

from __future__ import annotations

import torch

from prunelab.calibration.runner import LayerStats
from prunelab.methods import NoParams, PruningMethod, UnitScores, register
from prunelab.models.adapters import LayerAdapter


def channel_scores(weight: torch.Tensor, moments: dict[str, torch.Tensor]) -> torch.Tensor:
    """Wanda's structured score per input channel."""
    return weight.detach().double().cpu().abs().mean(0) * moments["sum_sq"].sqrt()


@register("wanda_sp")
class WandaSP(PruningMethod):
    """Wanda-sp: sequential, uniform per block, no compensation."""

    Params = NoParams
    statistics = ("attn_input", "mlp_input")
    needs = frozenset({"sequential"})

    def score_block(self, index: int, layer: LayerAdapter, stats: LayerStats,
                    comparable: bool) -> UnitScores:
        attn = channel_scores(layer.o_proj.weight, stats["attn_input"])
        mlp = channel_scores(layer.down_proj.weight, stats["mlp_input"])
        return UnitScores(attn.view(layer.geometry.num_heads, -1).sum(1), mlp)
