"""Prunable units grouped per (block, module), with their parameter costs.

A pool holds the units of one sub-layer (query heads of an attention, channels of an MLP),
their scores, and the order in which they would be removed (lowest score first). Costs are
*marginal* along that order, which is what makes grouped-query attention exact: removing a
query head costs its q_proj rows and o_proj columns, and the last query head of a KV group
also takes that group's k_proj / v_proj rows with it. Any prefix of the order therefore has an
exact cost, and the whole pool costs exactly the sub-layer's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prunelab.models.adapters import LayerAdapter

ATTENTION, MLP = "attention", "mlp"


@dataclass
class Pool:
    """Units of one sub-layer, in removal order, with marginal costs."""

    layer: int
    module: str
    scores: torch.Tensor
    order: list[int] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)

    @property
    def total_cost(self) -> float:
        """Parameters of the whole sub-layer (every unit removed)."""
        return float(sum(self.costs))

    @property
    def size(self) -> int:
        """Number of units."""
        return len(self.order)


def _row_params(linear) -> int:
    return linear.in_features + (1 if linear.bias is not None else 0)


def attention_pool(index: int, layer: LayerAdapter, scores: torch.Tensor) -> Pool:
    """Query heads of ``layer`` ordered by ascending score with GQA-aware marginal costs."""
    hd = layer.head_dim
    q_cost = hd * _row_params(layer.q_proj) + hd * layer.o_proj.out_features
    kv_cost = hd * (_row_params(layer.k_proj) + _row_params(layer.v_proj))
    kv_of = layer.kv_head_of()
    remaining = {kv: kv_of.count(kv) for kv in set(kv_of)}
    order = sorted(range(len(kv_of)), key=lambda h: (float(scores[h]), h))
    costs = []
    for head in order:
        remaining[kv_of[head]] -= 1
        costs.append(float(q_cost + (kv_cost if remaining[kv_of[head]] == 0 else 0)))
    return Pool(index, ATTENTION, scores, order, costs)


def mlp_pool(index: int, layer: LayerAdapter, scores: torch.Tensor) -> Pool:
    """MLP channels of ``layer`` ordered by ascending score; each costs 2 rows + 1 column."""
    cost = _row_params(layer.gate_proj) + _row_params(layer.up_proj) + \
        layer.down_proj.out_features
    order = sorted(range(scores.numel()), key=lambda c: (float(scores[c]), c))
    return Pool(index, MLP, scores, order, [float(cost)] * len(order))


def build_pools(layers: list[LayerAdapter], head_scores: list[torch.Tensor],
                channel_scores: list[torch.Tensor]) -> list[Pool]:
    """Two pools per block (attention, MLP), skipping sub-layers already removed."""
    pools = []
    for index, layer in enumerate(layers):
        if layer.has_attention:
            pools.append(attention_pool(index, layer, head_scores[index]))
        if layer.has_mlp:
            pools.append(mlp_pool(index, layer, channel_scores[index]))
    return pools
