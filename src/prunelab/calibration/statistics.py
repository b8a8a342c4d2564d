"""Statistics gathered by forward hooks while calibration runs, in float64 accumulators.

Each statistic kind is a :class:`Collector` registered by name; a method lists the kinds it
needs, the runner attaches one collector per kind and block, and the cache keys on the names.
Kinds gather over all calibration tokens (batch x sequence flattened).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from prunelab.models.adapters import LayerAdapter
from prunelab.registry import Registry


class Collector(ABC):
    """Accumulates one kind of statistic for one block through hooks."""

    name: ClassVar[str]

    def __init__(self, layer: LayerAdapter):
        self.layer = layer
        self._handles: list = []

    @abstractmethod
    def attach(self) -> None:
        """Register the hooks on ``self.layer``."""

    def detach(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @abstractmethod
    def result(self) -> dict[str, torch.Tensor]:
        """Finished statistics as float64 CPU tensors."""


class ChannelMoments:
    """Running count, sum, sum of squares and sum of absolute values per channel (float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.sum: torch.Tensor | None = None
        self.sum_sq: torch.Tensor | None = None
        self.sum_abs: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        """Add the rows of ``x`` (any leading shape, channels last)."""
        x = x.detach().reshape(-1, x.shape[-1]).double()
        if self.sum is None:
            zeros = torch.zeros(x.shape[-1], dtype=torch.float64, device=x.device)
            self.sum, self.sum_sq, self.sum_abs = zeros.clone(), zeros.clone(), zeros.clone()
        self.count += x.shape[0]
        self.sum += x.sum(0)
        self.sum_sq += (x * x).sum(0)
        self.sum_abs += x.abs().sum(0)

    def result(self) -> dict[str, torch.Tensor]:
        """mean, sample variance, mean square, mean absolute value, sum of squares, count."""
        n = self.count
        mean = self.sum / n
        var = (self.sum_sq - n * mean * mean) / max(n - 1, 1)
        return {
            "mean": mean.cpu(),
            "var": var.clamp_min(0).cpu(),
            "mean_sq": (self.sum_sq / n).cpu(),
            "mean_abs": (self.sum_abs / n).cpu(),
            "sum_sq": self.sum_sq.cpu(),
            "count": torch.tensor(float(n), dtype=torch.float64),
        }


class _InputMoments(Collector):
    """Moments of the input of one projection (a hook point of the adapter)."""

    projection: ClassVar[str]

    def attach(self) -> None:
        self.moments = ChannelMoments()
        module: nn.Module = getattr(self.layer, self.projection)
        self._handles.append(module.register_forward_hook(
            lambda _m, inputs, _o: self.moments.update(inputs[0])))

    def result(self) -> dict[str, torch.Tensor]:
        return self.moments.result()


STATISTICS: Registry[Collector] = Registry(
    "statistic", Collector, "statistic kind name -> Collector gathering it for one block")


@STATISTICS.register("attn_input")
class AttentionInputMoments(_InputMoments):
    """Per-channel moments of ``A``, the o_proj input (per-head attention outputs)."""

    name = "attn_input"
    projection = "o_proj"


@STATISTICS.register("mlp_input")
class MlpInputMoments(_InputMoments):
    """Per-channel moments of ``a = silu(gate) * up``, the down_proj input."""

    name = "mlp_input"
    projection = "down_proj"
