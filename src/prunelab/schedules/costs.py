"""What a unit costs: parameters, multiply-accumulates per token, or measured latency.

A schedule's budget (``schedule.target``) is a fraction of the model's prunable cost in one of
these currencies. Each cost model prices the units of a sub-layer as three numbers: per unit
(a query head's q_proj rows and o_proj columns; an MLP channel), per group (a KV head, paid
when its last query head goes) and fixed (what removing the whole sub-layer saves beyond its
units: nothing for parameters and MACs, the measured overhead for latency).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from prunelab.models.adapters import LayerAdapter
from prunelab.models.macs import attention_macs, mlp_macs


@dataclass(frozen=True)
class UnitCosts:
    """Cost of one unit, of one unit group (KV head), and of the sub-layer beyond its units."""

    per_unit: float
    per_group: float = 0.0
    fixed: float = 0.0


class CostModel(ABC):
    """Prices the units of attention and MLP sub-layers in one currency."""

    name: ClassVar[str]
    unit: ClassVar[str]

    @abstractmethod
    def attention(self, layer: LayerAdapter) -> UnitCosts:
        """Per query head, per KV head, and fixed costs of ``layer``'s attention."""

    @abstractmethod
    def mlp(self, layer: LayerAdapter) -> UnitCosts:
        """Per channel and fixed costs of ``layer``'s MLP."""


class ParameterCost(CostModel):
    """Weights and original biases of q/k/v/o and gate/up/down (the default budget)."""

    name, unit = "params", "parameters"

    def attention(self, layer: LayerAdapter) -> UnitCosts:
        return UnitCosts(layer.parameters_per_head(), layer.parameters_per_kv_head())

    def mlp(self, layer: LayerAdapter) -> UnitCosts:
        return UnitCosts(layer.parameters_per_channel())


@dataclass(frozen=True)
class MacCost(CostModel):
    """Multiply-accumulates per token at an average attended ``context`` (models/macs.py).

    A query head costs its projections and its scores; a KV head its k/v projections; a
    channel its three projections.
    """

    context: float
    name, unit = "macs", "MACs per token"

    def attention(self, layer: LayerAdapter) -> UnitCosts:
        d, hd = layer.hidden_size, layer.head_dim
        return UnitCosts(attention_macs(d, hd, 1, 0, self.context),
                         attention_macs(d, hd, 0, 1, self.context))

    def mlp(self, layer: LayerAdapter) -> UnitCosts:
        return UnitCosts(mlp_macs(layer.hidden_size, 1))


@dataclass(frozen=True)
class LatencyCost(CostModel):
    """Seconds per token from a measured latency profile (eval/latency.py)."""

    attention_costs: UnitCosts
    mlp_costs: UnitCosts
    name, unit = "latency", "seconds per token"

    def attention(self, layer: LayerAdapter) -> UnitCosts:
        return self.attention_costs

    def mlp(self, layer: LayerAdapter) -> UnitCosts:
        return self.mlp_costs
