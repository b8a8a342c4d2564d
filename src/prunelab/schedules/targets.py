"""The currency of a schedule's budget (``schedule.target``) and what each run achieved in all.

``params`` counts prunable weights; ``macs`` multiply-accumulates per token at
``target_seqlen``; ``latency`` the model's measured prefill time at ``target_shapes`` (a
weighted mix; by default the benchmark's speed grid) and ``latency_decode`` its measured time
per decode step (``target_decode``: prompt and new tokens; by default the benchmark's), both
profiled on this device (eval/latency.py) with the embedding, final norm, LM head and overhead
included, so their ratios are fractions of the time the model takes. Whatever the target, the
achieved fraction in every currency is recorded.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import torch

from prunelab.errors import PrunelabError
from prunelab.eval import latency
from prunelab.eval.latency import LatencyShape
from prunelab.models.adapters import LayerAdapter, ModelAdapter
from prunelab.schedules.costs import (
    CostModel,
    DecodeLatencyCost,
    LatencyCost,
    MacCost,
    ParameterCost,
    ShapeCosts,
    UnitCosts,
)
from prunelab.schedules.pools import build_pools

log = logging.getLogger(__name__)


class RunningModel(Protocol):
    """The model a latency currency is profiled on (a models.loading.LoadedModel)."""

    model: torch.nn.Module
    adapter: ModelAdapter
    device: torch.device


LATENCY_CURRENCIES = ("latency", "latency_decode")
#: Decode steps profiled when neither the schedule nor the benchmark names any.
DEFAULT_DECODE = (32, 64)


def latency_shapes(params: Any, speed: Any, currency: str) -> list[LatencyShape]:
    """The shapes a latency currency is profiled at: the schedule's, else the benchmark's.

    ``speed`` is the benchmark's config.schema.SpeedSpec; without a grid there, prefill is
    profiled at ``target_batch x target_seqlen``.
    """
    if currency == "latency_decode":
        prompt, tokens = params.target_decode or (
            (speed.decode_prompt, speed.decode_tokens) if speed.decode_tokens
            else DEFAULT_DECODE)
        return [LatencyShape("decode", 1, prompt, tokens)]
    grid = params.target_shapes or speed.grid or [[params.target_batch, params.target_seqlen]]
    weights = params.target_weights or [1.0] * len(grid)
    return [LatencyShape("prefill", batch, seqlen, weight=w)
            for (batch, seqlen), w in zip(grid, weights)]


def check_shapes(shapes: list[LatencyShape], context_length: int, currency: str) -> None:
    """Refuse shapes longer than the model's context."""
    for shape in shapes:
        if shape.positions > context_length:
            raise PrunelabError(
                f"schedule.target={currency} profiles {shape.name}, {shape.positions} "
                f"positions, beyond the model's context length of {context_length}. Choose "
                "shorter schedule.target_shapes / target_decode.")


def _latency_cost(currency: str, loaded: RunningModel, shapes: list[LatencyShape],
                  cache_dir: str) -> LatencyCost:
    check_shapes(shapes, loaded.adapter.context_length, currency)
    vocab = loaded.adapter.lm_head.weight.shape[0]
    costs = []
    for shape in shapes:
        profile = latency.shape_profile(loaded.model, loaded.adapter, loaded.device, shape,
                                        vocab, cache_dir)
        attention, mlp = (UnitCosts(fit.per_unit, fit.per_group, fit.fixed)
                          for fit in (profile.attention, profile.mlp))
        seconds = LatencyCost((ShapeCosts(shape.name, 1.0, attention, mlp, 0.0, 1.0),))
        # the model's fixed part: its measured time beyond what its sub-layers are priced at
        fixed = profile.model_s - total_cost(loaded.adapter.layers, seconds)
        costs.append(ShapeCosts(shape.name, shape.weight, attention, mlp, fixed,
                                profile.model_s, profile.head_s))
    kind = DecodeLatencyCost if currency == "latency_decode" else LatencyCost
    return kind(tuple(costs))


def cost_model_for(params: Any, loaded: RunningModel, speed: Any, cache_dir: str,
                   currency: str | None = None) -> CostModel:
    """The cost model of ``currency`` (default: ``params.target``); latency is profiled once.

    Latency profiles are cached per device, model geometry and shape (eval/latency.py).
    """
    currency = currency or params.target
    if currency == "params":
        return ParameterCost()
    if currency == "macs":
        return MacCost((params.target_seqlen + 1) / 2)
    return _latency_cost(currency, loaded, latency_shapes(params, speed, currency), cache_dir)


def reported_currencies(params: Any, loaded: RunningModel, speed: Any, cache_dir: str,
                        budget_model: CostModel, profile: bool = True
                        ) -> tuple[dict[str, CostModel], dict[str, str]]:
    """Cost models of every currency, for the achieved fractions of every run.

    The budget's own model is reused. The other latency currencies are profiled (once per
    device, model geometry and shape, then cached: minutes for a real model) only where the
    job measures speed-ups too (``benchmark.speed.reference=dense``), so a measured speed-up
    stands beside each predicted fraction. Why a currency is missing is returned and logged:
    at INFO when it was not profiled by design (also when ``profile`` is false: a streamed
    model), as a warning when its profile could not be made.
    """
    models: dict[str, CostModel] = {"params": ParameterCost(),
                                    "macs": MacCost((params.target_seqlen + 1) / 2),
                                    budget_model.name: budget_model}
    missing: dict[str, str] = {}
    skipped = _why_not_profiled(speed, profile)
    for currency in (c for c in LATENCY_CURRENCIES if c not in models):
        if skipped:
            missing[currency] = f"not profiled: {skipped}"
            log.info("No achieved %s fraction for this run: %s", currency, missing[currency])
            continue
        try:
            models[currency] = cost_model_for(params, loaded, speed, cache_dir, currency)
        except PrunelabError as error:
            missing[currency] = str(error)
            log.warning("No achieved %s fraction for this run: %s", currency, error)
    return models, missing


def _why_not_profiled(speed: Any, profile: bool) -> str | None:
    """Why a job records no latency currency beyond its budget's; None when it does."""
    if not profile:
        return "the model is streamed (a profile times the whole model in memory)"
    if not speed.enabled:
        return "the benchmark times no speed (its speed.grid and speed.decode_tokens are empty)"
    if speed.reference != "dense":
        return ("the benchmark measures no speed-up to check it against "
                "(benchmark.speed.reference=dense profiles it)")
    return None


def shape_currencies(models: dict[str, CostModel]) -> dict[str, CostModel]:
    """Each latency currency at each of its shapes alone, as ``<currency>/<shape>``."""
    return {f"{name}/{shape.name}": model.at(shape.name) for name, model in models.items()
            if isinstance(model, LatencyCost) for shape in model.shapes}


def prunable_ratio(ratio: float, layers: list[LayerAdapter], cost_model: CostModel) -> float:
    """The fraction of the prunable cost that removes ``ratio`` of the whole model's cost."""
    prunable = total_cost(layers, cost_model)
    whole = prunable + cost_model.model_fixed
    if cost_model.model_fixed == 0 or ratio == 0:
        return ratio
    converted = ratio * whole / prunable
    if converted >= 1:
        raise PrunelabError(
            f"schedule.ratio={ratio} of the model's {cost_model.name} cannot be removed: the "
            f"attention and MLP sub-layers are only {prunable / whole:.3f} of it (embedding, "
            "final norm, LM head and overhead are the rest). Lower the ratio.")
    return converted


def zero_scores(layers: list[LayerAdapter]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Placeholder scores for pools that are only priced, never ranked."""
    return ([torch.zeros(layer.geometry.num_heads) for layer in layers],
            [torch.zeros(layer.geometry.intermediate_size) for layer in layers])


def total_cost(layers: list[LayerAdapter], cost_model: CostModel) -> float:
    """Cost of every prunable unit of ``layers`` (removed sub-layers cost nothing)."""
    return sum(p.total_cost for p in build_pools(layers, *zero_scores(layers), cost_model))


def whole_cost(layers: list[LayerAdapter], cost_model: CostModel) -> float:
    """The model's cost in ``cost_model``'s currency: its units and what no pruning removes."""
    return total_cost(layers, cost_model) + cost_model.model_fixed


def achieved_fractions(before: dict[str, float], layers_after: list[LayerAdapter],
                       models: dict[str, CostModel]) -> dict[str, float]:
    """Fraction of each currency's cost removed, from the totals ``before`` pruning."""
    return {name: 1 - whole_cost(layers_after, model) / before[name]
            for name, model in models.items()}
