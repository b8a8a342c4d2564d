"""Prunable units grouped per (block, module), with their costs.

A pool holds the units of one sub-layer (query heads of an attention, channels of an MLP),
their scores, and the order in which they would be removed (lowest score first). Costs are
*marginal* along that order, which is what makes grouped-query attention exact: removing a
query head costs its own share, and the last query head of a KV group also takes that group's
k_proj / v_proj share with it; the last unit of a pool also carries what removing the whole
sub-layer saves beyond its units (a cost model's ``fixed``). Any prefix of the order therefore
has an exact cost, and the whole pool costs exactly the sub-layer. Costs are priced by a
:class:`~prunelab.schedules.costs.CostModel` (parameters by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prunelab.models.adapters import LayerAdapter
from prunelab.schedules.costs import CostModel, ParameterCost

ATTENTION, MLP = "attention", "mlp"


@dataclass
class Pool:
    """Units of one sub-layer, in removal order, with marginal costs."""

    layer: int
    module: str
    scores: torch.Tensor
    order: list[int] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    #: what removing the whole sub-layer saves beyond its units (carried by the last unit)
    fixed: float = 0.0
    #: importance of the sub-layer as a whole, for schedules that size modules (``dynamic``)
    module_score: float | None = None

    @property
    def total_cost(self) -> float:
        """Cost of the whole sub-layer (every unit removed)."""
        return float(sum(self.costs))

    @property
    def size(self) -> int:
        """Number of units."""
        return len(self.order)


def attention_pool(index: int, layer: LayerAdapter, scores: torch.Tensor,
                   cost_model: CostModel) -> Pool:
    """Query heads of ``layer`` ordered by ascending score with GQA-aware marginal costs."""
    prices = cost_model.attention(layer)
    kv_of = layer.kv_head_of()
    remaining = {kv: kv_of.count(kv) for kv in set(kv_of)}
    order = sorted(range(len(kv_of)), key=lambda h: (float(scores[h]), h))
    costs = []
    for head in order:
        remaining[kv_of[head]] -= 1
        costs.append(float(prices.per_unit
                           + (prices.per_group if remaining[kv_of[head]] == 0 else 0)))
    costs[-1] += prices.fixed
    return Pool(index, ATTENTION, scores, order, costs, prices.fixed)


def mlp_pool(index: int, layer: LayerAdapter, scores: torch.Tensor,
             cost_model: CostModel) -> Pool:
    """MLP channels of ``layer`` ordered by ascending score, each at the same price."""
    prices = cost_model.mlp(layer)
    order = sorted(range(scores.numel()), key=lambda c: (float(scores[c]), c))
    costs = [float(prices.per_unit)] * len(order)
    costs[-1] += prices.fixed
    return Pool(index, MLP, scores, order, costs, prices.fixed)


def build_pools(layers: list[LayerAdapter], head_scores: list[torch.Tensor],
                channel_scores: list[torch.Tensor], cost_model: CostModel | None = None,
                module_scores: list[tuple[float, float]] | None = None) -> list[Pool]:
    """Two pools per block (attention, MLP), skipping sub-layers already removed.

    ``module_scores`` gives each block's (attention, MLP) importance as a whole, when the
    method measures one.
    """
    cost_model = cost_model or ParameterCost()
    pools = []
    for index, layer in enumerate(layers):
        if layer.has_attention:
            pools.append(attention_pool(index, layer, head_scores[index], cost_model))
            if module_scores is not None:
                pools[-1].module_score = float(module_scores[index][0])
        if layer.has_mlp:
            pools.append(mlp_pool(index, layer, channel_scores[index], cost_model))
            if module_scores is not None:
                pools[-1].module_score = float(module_scores[index][1])
    return pools
