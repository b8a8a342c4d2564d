"""FLAP (An et al., AAAI 2024): fluctuation metric, adaptive structure, bias compensation.

Per input channel ``j`` of ``o_proj`` / ``down_proj`` (statistics over calibration tokens of
the *unpruned* model, one pass):

- ``IFV_j  = var_j``
- ``WIFV_j = var_j * ||W[:, j]||_2^2`` (default)
- ``WIFN_j = mean_i |W[i, j]| * sqrt(E[x_j^2])``

As in the reference code (CASIA-IVA-Lab/FLAP), the attention-channel metric is squared
before anything else (``square_attention``, default on). The structure comes from the
schedule group: with ``schedule=global`` (AL-AM, default; AL-MM with ``attention_ratio``)
each block's channel scores are standardised per module and a head scores the mean of its
standardised channels; with ``schedule=uniform`` (UL-UM; UL-MM with ``attention_ratio``) a
head scores the sum of its channels. Removed channels' mean contribution ``W[:, R] @ mu[R]``
is added as a bias (``bias_compensation``, default on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from prunelab.calibration.runner import LayerStats
from prunelab.methods import PruningMethod, UnitScores, register
from prunelab.models.adapters import LayerAdapter


def standardize(x: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` over one block's module (FLAP's cross-layer normalisation)."""
    std = x.std()
    return (x - x.mean()) / (std if std > 0 else 1.0)


def fluctuation_metric(metric: str, moments: dict[str, torch.Tensor],
                       weight: torch.Tensor) -> torch.Tensor:
    """IFV / WIFV / WIFN per input channel of ``weight`` (out x in), in float64."""
    w = weight.detach().double().cpu()
    if metric == "IFV":
        return moments["var"].clone()
    if metric == "WIFV":
        return moments["var"] * w.pow(2).sum(0)
    return w.abs().mean(0) * moments["mean_sq"].sqrt()


@dataclass
class FLAPParams:
    """FLAP's options."""

    metric: Literal["IFV", "WIFV", "WIFN"] = "WIFV"
    bias_compensation: bool = True
    square_attention: bool = True  # as the reference code does


@register("flap")
class FLAP(PruningMethod):
    """Fluctuation-based adaptive structured pruning."""

    Params = FLAPParams
    statistics = ("attn_input", "mlp_input")

    def score_block(self, index: int, layer: LayerAdapter, stats: LayerStats,
                    comparable: bool) -> UnitScores:
        p = self.params
        attn = fluctuation_metric(p.metric, stats["attn_input"], layer.o_proj.weight)
        if p.square_attention:
            attn = attn.pow(2)
        mlp = fluctuation_metric(p.metric, stats["mlp_input"], layer.down_proj.weight)
        per_head = layer.geometry.num_heads
        if comparable:
            return UnitScores(standardize(attn).view(per_head, -1).mean(1), standardize(mlp))
        return UnitScores(attn.view(per_head, -1).sum(1), mlp)
