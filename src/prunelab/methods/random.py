"""Random structured pruning: uniform random scores per head and channel, seeded per block."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunelab.calibration.runner import LayerStats
from prunelab.methods import PruningMethod, UnitScores, register
from prunelab.models.adapters import LayerAdapter


@dataclass
class RandomParams:
    """Seed of the random scores."""

    seed: int = 0


@register("random")
class RandomSP(PruningMethod):
    """Random units."""

    Params = RandomParams

    def score_block(self, index: int, layer: LayerAdapter, stats: LayerStats,
                    comparable: bool) -> UnitScores:
        g = layer.geometry
        generator = torch.Generator().manual_seed(self.params.seed * 1_000_003 + index)
        return UnitScores(torch.rand(g.num_heads, generator=generator, dtype=torch.float64),
                          torch.rand(g.intermediate_size, generator=generator,
                                     dtype=torch.float64))
