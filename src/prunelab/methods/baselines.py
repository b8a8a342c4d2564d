"""Baselines of the FLAP tables: Wanda-sp, magnitude (mag_sp) and random structured pruning.

All score an o_proj / down_proj input channel, and a head by the sum over its channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunelab.calibration.runner import LayerStats
from prunelab.methods.base import METHODS, NoParams
from prunelab.methods.structured import LayerScores, StructuredMethod
from prunelab.models.adapters import LayerAdapter


def _heads_by_sum(channel_scores: torch.Tensor, layer: LayerAdapter) -> torch.Tensor:
    return channel_scores.view(layer.geometry.num_heads, -1).sum(1)


@METHODS.register("wanda_sp")
class WandaSP(StructuredMethod):
    """Wanda-sp: ``mean_i |W[i, j]| * ||X_j||_2``, sequential, no compensation.

    Each block is calibrated on the outputs of the already-pruned previous blocks.
    Reference calibration: C4, 128 samples.
    """

    Params = NoParams
    statistics = ("attn_input", "mlp_input")
    sequential = True

    @staticmethod
    def channel_scores(weight: torch.Tensor, moments: dict[str, torch.Tensor]) -> torch.Tensor:
        """Wanda's structured score per input channel."""
        return weight.detach().double().cpu().abs().mean(0) * moments["sum_sq"].sqrt()

    def score(self, index: int, layer: LayerAdapter, stats: LayerStats,
              comparable: bool) -> LayerScores:
        attn = self.channel_scores(layer.o_proj.weight, stats["attn_input"])
        mlp = self.channel_scores(layer.down_proj.weight, stats["mlp_input"])
        return LayerScores(_heads_by_sum(attn, layer), mlp)


@METHODS.register("mag_sp")
class MagnitudeSP(StructuredMethod):
    """Magnitude: ``||W[:, j]||_2`` of the output projections; no calibration data."""

    Params = NoParams

    def score(self, index: int, layer: LayerAdapter, stats: LayerStats,
              comparable: bool) -> LayerScores:
        attn = layer.o_proj.weight.detach().double().cpu().norm(dim=0)
        mlp = layer.down_proj.weight.detach().double().cpu().norm(dim=0)
        return LayerScores(_heads_by_sum(attn, layer), mlp)


@dataclass
class RandomParams:
    """Seed of the random scores."""

    seed: int = 0


@METHODS.register("random")
class RandomSP(StructuredMethod):
    """Random units: uniform random scores, seeded per block."""

    Params = RandomParams

    def score(self, index: int, layer: LayerAdapter, stats: LayerStats,
              comparable: bool) -> LayerScores:
        g = layer.geometry
        generator = torch.Generator().manual_seed(self.params.seed * 1_000_003 + index)
        return LayerScores(torch.rand(g.num_heads, generator=generator, dtype=torch.float64),
                           torch.rand(g.intermediate_size, generator=generator,
                                      dtype=torch.float64))
