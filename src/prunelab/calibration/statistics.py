"""Statistics gathered by forward hooks while calibration runs, in float64 accumulators.

Each statistic kind is a :class:`Collector` registered by name; a method lists the kinds it
needs, the runner attaches one collector per kind and block, and the cache keys on the names.
Kinds gather over all calibration tokens (batch x sequence flattened).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import UnsupportedModelError
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
    """Running per-channel count, mean, variance, mean square and mean absolute value.

    Sums are taken about a per-channel shift ``c`` (the first batch's mean), so the variance
    ``(S2 - S1^2 / n) / (n - 1)`` has no cancellation. Float64 inputs are summed in float64;
    other dtypes are summed per batch in float32 and the partial sums added in float64:
    about 2x faster on the o_proj / down_proj inputs of every calibration batch (the largest
    part of calibration's cost beyond the forward pass), with relative error ~1e-6 in the
    variance, far below the sampling noise of a calibration set.
    """

    def __init__(self) -> None:
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None  # of x - c
        self.sum_sq: torch.Tensor | None = None  # of (x - c)^2
        self.sum_abs: torch.Tensor | None = None  # of |x|

    def update(self, x: torch.Tensor) -> None:
        """Add the rows of ``x`` (any leading shape, channels last)."""
        x = x.detach().reshape(-1, x.shape[-1])
        x = x if x.dtype == torch.float64 else x.float()
        if self.shift is None:
            self.shift = x.mean(0)
            zeros = torch.zeros(x.shape[-1], dtype=torch.float64, device=x.device)
            self.sum, self.sum_sq, self.sum_abs = zeros.clone(), zeros.clone(), zeros.clone()
        self.count += x.shape[0]
        centred = x - self.shift
        self.sum += centred.sum(0).double()
        self.sum_sq += centred.mul_(centred).sum(0).double()
        self.sum_abs += x.abs().sum(0).double()

    def result(self) -> dict[str, torch.Tensor]:
        """mean, sample variance, mean square, mean absolute value, sum of squares, count."""
        n = self.count
        shift = self.shift.double()
        var = (self.sum_sq - self.sum * self.sum / n) / max(n - 1, 1)
        sum_sq = self.sum_sq + 2 * shift * self.sum + n * shift * shift
        return {
            "mean": (shift + self.sum / n).cpu(),
            "var": var.clamp_min(0).cpu(),
            "mean_sq": (sum_sq / n).cpu(),
            "mean_abs": (self.sum_abs / n).cpu(),
            "sum_sq": sum_sq.cpu(),
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
    "statistic", "statistic kind name -> Collector gathering it for one block",
    base_cls=Collector)


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


def _weight_per_head(layer: LayerAdapter) -> torch.Tensor:
    """``W_o`` as [hidden, heads, head_dim]: head g's columns are ``W_o[:, g]``."""
    w = layer.o_proj.weight.detach()
    return w.view(w.shape[0], -1, layer.head_dim)


def head_contributions(layer: LayerAdapter, a: torch.Tensor) -> torch.Tensor:
    """``W_o[:, S_g] A_g`` for every token and head: [tokens, heads, hidden]."""
    a = a.detach().reshape(-1, a.shape[-1])
    w = _weight_per_head(layer)
    return torch.einsum("nhk,dhk->nhd", a.view(a.shape[0], w.shape[1], -1).to(w.dtype), w)


def norm_eps(norm: nn.Module) -> float:
    """The epsilon of an RMSNorm module (LLaMA names it ``variance_epsilon``, others ``eps``)."""
    return getattr(norm, "variance_epsilon", getattr(norm, "eps", 0.0))


def gated_silu_mlp(layer: LayerAdapter) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> down(silu(gate(n2(x))) * up(n2(x)))`` computed from the weights.

    The modules are not called, so no statistics hook sees these extra evaluations.
    """
    act = getattr(layer.mlp, "act_fn", None)
    probe = torch.linspace(-6, 6, 49, dtype=layer.gate_proj.weight.dtype,
                           device=layer.gate_proj.weight.device)
    if act is None or not torch.allclose(act(probe), F.silu(probe)):
        raise UnsupportedModelError(
            f"{type(layer).__name__}: this statistic assumes the gated SiLU MLP "
            f"down(silu(gate(x)) * up(x)); this model's MLP activation is {act!r}.")
    norm = layer.mlp_norm
    eps = norm_eps(norm)
    gate, up, down = layer.gate_proj, layer.up_proj, layer.down_proj

    def mlp(x: torch.Tensor) -> torch.Tensor:
        n = F.rms_norm(x, (x.shape[-1],), norm.weight, eps)
        return F.linear(F.silu(F.linear(n, gate.weight, gate.bias)) *
                        F.linear(n, up.weight, up.bias), down.weight, down.bias)

    return mlp


@STATISTICS.register("head_output_norm")
class HeadOutputNorm(Collector):
    """Mean over tokens of ``||W_o[:, S_g] A_g||_2`` per query head (LLM-BIP).

    It is how much the attention output changes, token by token, when head g is removed.
    """

    name = "head_output_norm"

    def attach(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

        def hook(_module, inputs, _output):
            norms = head_contributions(self.layer, inputs[0]).norm(dim=-1).double().sum(0)
            self.total = norms if self.total is None else self.total + norms
            self.count += inputs[0].numel() // inputs[0].shape[-1]

        self._handles.append(self.layer.o_proj.register_forward_hook(hook))

    def result(self) -> dict[str, torch.Tensor]:
        return {"mean_norm": (self.total / self.count).cpu()}


@STATISTICS.register("block_output_norm")
class BlockOutputNorm(Collector):
    """Mean over tokens of ``||y||_2`` of the block's output (LLM-BIP's global normaliser)."""

    name = "block_output_norm"

    def attach(self) -> None:
        self.total, self.count = 0.0, 0

        def hook(_module, _inputs, output):
            y = output[0] if isinstance(output, tuple) else output
            y = y.detach().reshape(-1, y.shape[-1])
            self.total += float(y.double().norm(dim=-1).sum())
            self.count += y.shape[0]

        self._handles.append(self.layer.layer.register_forward_hook(hook))

    def result(self) -> dict[str, torch.Tensor]:
        return {"mean_norm": torch.tensor(self.total / self.count, dtype=torch.float64)}


@STATISTICS.register("mlp_ranges")
class MlpRanges(Collector):
    """Observed ranges the MLP Lipschitz bound needs.

    The smallest RMS of the MLP input ``h``, and the largest ``|silu'(g) * u|`` and
    ``|silu(g)|`` over tokens and channels.
    """

    name = "mlp_ranges"

    def attach(self) -> None:
        self.min_rms, self.max_dsilu_u, self.max_silu = float("inf"), 0.0, 0.0
        self._gate: torch.Tensor | None = None

        def on_norm(module, inputs, _output):
            h = inputs[0].detach().double()
            eps = norm_eps(module)
            rms = (h.pow(2).mean(-1) + eps).sqrt()
            self.min_rms = min(self.min_rms, float(rms.min()))

        def on_gate(_module, _inputs, output):
            self._gate = output.detach().double()

        def on_up(_module, _inputs, output):
            g, u = self._gate, output.detach().double()
            s = torch.sigmoid(g)
            dsilu = s * (1 + g * (1 - s))
            self.max_dsilu_u = max(self.max_dsilu_u, float((dsilu * u).abs().max()))
            self.max_silu = max(self.max_silu, float((g * s).abs().max()))

        self._handles += [self.layer.mlp_norm.register_forward_hook(on_norm),
                          self.layer.gate_proj.register_forward_hook(on_gate),
                          self.layer.up_proj.register_forward_hook(on_up)]

    def result(self) -> dict[str, torch.Tensor]:
        return {key: torch.tensor(getattr(self, key), dtype=torch.float64)
                for key in ("min_rms", "max_dsilu_u", "max_silu")}


@STATISTICS.register("mlp_response")
class MlpResponse(Collector):
    """How much the MLP output moves when a head is removed (first ``MAX_TOKENS`` tokens).

    Sums ``||MLP(h + dH_g) - MLP(h)||`` and ``||dH_g||`` over tokens and heads, with
    ``dH_g = -W_o[:, S_g] A_g``; LLM-BIP's empirical Lipschitz estimate is their ratio.
    """

    name = "mlp_response"
    MAX_TOKENS = 1024

    def attach(self) -> None:
        self.mlp = gated_silu_mlp(self.layer)
        self.output_change, self.input_change, self.tokens = 0.0, 0.0, 0
        self._a: torch.Tensor | None = None

        def on_o_proj(_module, inputs, _output):
            self._a = inputs[0].detach()

        def on_norm(_module, inputs, _output):
            room = self.MAX_TOKENS - self.tokens
            if room <= 0:
                return
            h = inputs[0].detach().reshape(-1, inputs[0].shape[-1])[:room]
            a = self._a.reshape(-1, self._a.shape[-1])[:room]
            base = self.mlp(h)
            for d_h in (-head_contributions(self.layer, a)).unbind(1):
                self.output_change += float((self.mlp(h + d_h) - base).double().norm(dim=-1)
                                            .sum())
                self.input_change += float(d_h.double().norm(dim=-1).sum())
            self.tokens += h.shape[0]

        self._handles += [self.layer.o_proj.register_forward_hook(on_o_proj),
                          self.layer.mlp_norm.register_forward_hook(on_norm)]

    def result(self) -> dict[str, torch.Tensor]:
        return {"output_change": torch.tensor(self.output_change, dtype=torch.float64),
                "input_change": torch.tensor(self.input_change, dtype=torch.float64),
                "tokens": torch.tensor(float(self.tokens), dtype=torch.float64)}
