"""What a unit costs: parameters, multiply-accumulates per token, or measured latency.

A schedule's budget (``schedule.target``) is a fraction of the model's cost in one of these
currencies: of its prunable parameters or MACs, or of its whole measured time (prefill or
decode), the parts no pruning removes included. Each cost model prices the units of a
sub-layer as three numbers: per unit (a query head's q_proj rows and o_proj columns; an MLP
channel), per group (a KV head, paid when its last query head goes) and fixed (what removing
the whole sub-layer saves beyond its units: nothing for parameters and MACs, the measured
overhead for latency).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
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

    @property
    def model_fixed(self) -> float:
        """Cost of what no pruning removes (nothing for parameters and MACs).

        Ratios of a currency are fractions of its prunable cost plus this.
        """
        return 0.0


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
class ShapeCosts:
    """Seconds of one profiled shape (eval/latency.py): sub-layer prices, the fixed rest, total."""

    name: str
    weight: float
    attention: UnitCosts
    mlp: UnitCosts
    fixed: float  # what no pruning removes: embedding, final norm, LM head, overhead
    total: float  # the model's measured seconds at this shape
    head: float = 0.0  # of ``fixed``: embedding, final norm and LM head timed on their own


@dataclass(frozen=True)
class LatencyCost(CostModel):
    """Fractions of the model's measured time, over a weighted mix of profiled shapes.

    A unit costs the weighted mean over shapes of its seconds divided by the model's measured
    seconds at that shape; the fixed parts (embedding, final norm, LM head, overhead) are
    :attr:`model_fixed`, so the dense model's whole cost is one and a ratio is a fraction of
    the time the model takes.
    """

    shapes: tuple[ShapeCosts, ...]
    name, unit = "latency", "fraction of the model's measured prefill time"

    def __post_init__(self) -> None:
        if not self.shapes or sum(s.weight for s in self.shapes) <= 0:
            raise ValueError("a latency cost needs at least one shape of positive weight")

    def _mean(self, seconds) -> float:
        weights = sum(s.weight for s in self.shapes)
        return sum(s.weight * seconds(s) / s.total for s in self.shapes) / weights

    def _unit_costs(self, part: str) -> UnitCosts:
        return UnitCosts(*(self._mean(lambda s, f=f: getattr(getattr(s, part), f))
                           for f in ("per_unit", "per_group", "fixed")))

    def attention(self, layer: LayerAdapter) -> UnitCosts:
        return self._unit_costs("attention")

    def mlp(self, layer: LayerAdapter) -> UnitCosts:
        return self._unit_costs("mlp")

    @property
    def model_fixed(self) -> float:
        return self._mean(lambda s: s.fixed)

    def describe(self) -> dict[str, dict[str, float]]:
        """Per shape, in seconds: the model's time, its fixed part and the head within it."""
        return {s.name: {"weight": s.weight, "model_s": s.total, "fixed_s": s.fixed,
                         "head_s": s.head, "overhead_s": s.fixed - s.head}
                for s in self.shapes}

    def at(self, name: str) -> LatencyCost:
        """The same currency at one of its shapes alone (its per-shape fractions)."""
        shape = next(s for s in self.shapes if s.name == name)
        return type(self)((replace(shape, weight=1.0),))


class DecodeLatencyCost(LatencyCost):
    """:class:`LatencyCost` of decode steps: one new token with a KV cache."""

    name, unit = "latency_decode", "fraction of the model's measured decode-step time"
