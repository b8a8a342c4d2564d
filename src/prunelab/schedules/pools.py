"""Prunable units grouped per (block, module), with their costs.

A pool holds the units of one sub-layer (query heads of an attention, channels of an MLP),
their scores, and the order in which they would be removed (lowest score first). Costs are
*marginal* along that order, which is what makes grouped-query attention exact: removing a
query head costs its own share, and the last query head of a KV group also takes that group's
k_proj / v_proj share with it; the last unit of a pool also carries what removing the whole
sub-layer saves beyond its units (a cost model's ``fixed``). Any prefix of the order therefore
has an exact cost, and the whole pool costs exactly the sub-layer. Costs are priced by a
:class:`~prunelab.schedules.costs.CostModel` (parameters by default).

An attention unit is one query head unless ``head_groups`` asks otherwise: ``even`` makes a
unit of one query head per KV head (the r-th lowest-scored of every group), so any removal
keeps the groups equal and a GGUF export needs no padding (export/deci.py); ``whole`` makes a
unit of a whole KV group. A grouped unit scores the mean of its heads' scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prunelab.models.adapters import LayerAdapter
from prunelab.schedules.costs import CostModel, ParameterCost

ATTENTION, MLP = "attention", "mlp"
#: How query heads form attention units: singly, one per KV head together, or whole KV groups.
HEAD_GROUPS = ("any", "even", "whole")


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
    #: query heads of each unit when units group heads (``head_groups``); None: unit = head
    members: list[list[int]] | None = None

    @property
    def total_cost(self) -> float:
        """Cost of the whole sub-layer (every unit removed)."""
        return float(sum(self.costs))

    @property
    def size(self) -> int:
        """Number of units."""
        return len(self.order)

    def removed_indices(self, units: list[int]) -> set[int]:
        """Heads or channels that removing ``units`` removes."""
        if self.members is None:
            return set(units)
        return {index for unit in units for index in self.members[unit]}

    def units_for(self, count: int) -> int:
        """Units to keep so that at least ``count`` heads or channels stay."""
        if self.members is None:
            return count
        widest = max(len(m) for m in self.members)
        return -(-count // widest)


def head_units(kv_of: list[int], scores: torch.Tensor,
               head_groups: str) -> tuple[list[list[int]], torch.Tensor]:
    """Query heads of each attention unit, and each unit's score (the mean of its heads')."""
    if head_groups == "any":
        return [[h] for h in range(len(kv_of))], scores
    groups: dict[int, list[int]] = {}
    for head in sorted(range(len(kv_of)), key=lambda h: (float(scores[h]), h)):
        groups.setdefault(kv_of[head], []).append(head)
    if head_groups == "whole":
        units = [groups[kv] for kv in sorted(groups)]
    else:
        depth = max(len(heads) for heads in groups.values())
        units = [[groups[kv][r] for kv in sorted(groups) if r < len(groups[kv])]
                 for r in range(depth)]
    unit_scores = torch.tensor([float(scores[unit].float().mean()) for unit in units])
    return units, unit_scores


def attention_pool(index: int, layer: LayerAdapter, scores: torch.Tensor,
                   cost_model: CostModel, head_groups: str = "any") -> Pool:
    """Attention units of ``layer`` ordered by ascending score with GQA-aware marginal costs."""
    prices = cost_model.attention(layer)
    kv_of = layer.kv_head_of()
    units, unit_scores = head_units(kv_of, scores, head_groups)
    remaining = {kv: kv_of.count(kv) for kv in set(kv_of)}
    order = sorted(range(len(units)), key=lambda u: (float(unit_scores[u]), u))
    costs = []
    for unit in order:
        cost = 0.0
        for head in units[unit]:
            remaining[kv_of[head]] -= 1
            cost += prices.per_unit + (prices.per_group if remaining[kv_of[head]] == 0 else 0)
        costs.append(float(cost))
    costs[-1] += prices.fixed
    return Pool(index, ATTENTION, unit_scores, order, costs, prices.fixed,
                members=None if head_groups == "any" else units)


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
                module_scores: list[tuple[float, float]] | None = None,
                head_groups: str = "any") -> list[Pool]:
    """Two pools per block (attention, MLP), skipping sub-layers already removed.

    ``module_scores`` gives each block's (attention, MLP) importance as a whole, when the
    method measures one; ``head_groups`` says how query heads form units (module docstring).
    """
    cost_model = cost_model or ParameterCost()
    pools = []
    for index, layer in enumerate(layers):
        if layer.has_attention:
            pools.append(attention_pool(index, layer, head_scores[index], cost_model,
                                        head_groups))
            if module_scores is not None:
                pools[-1].module_score = float(module_scores[index][0])
        if layer.has_mlp:
            pools.append(mlp_pool(index, layer, channel_scores[index], cost_model))
            if module_scores is not None:
                pools[-1].module_score = float(module_scores[index][1])
    return pools
