"""The currency of a schedule's budget (``schedule.target``) and what each run achieved in all.

``params`` counts prunable weights; ``macs`` multiply-accumulates per token at
``target_seqlen``; ``latency`` the measured time per token of the sub-layers on this device
(eval/latency.py). Whatever the target, the achieved fraction in every currency is recorded.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import torch

from prunelab.errors import PrunelabError
from prunelab.eval import latency
from prunelab.models.adapters import LayerAdapter
from prunelab.schedules.costs import CostModel, LatencyCost, MacCost, ParameterCost, UnitCosts
from prunelab.schedules.pools import build_pools


def cost_model_for(params: Any, layers: list[LayerAdapter], device: torch.device,
                   dtype: torch.dtype, cache_dir: str) -> CostModel:
    """The cost model ``params.target`` names (latency: profiled once, then cached)."""
    if params.target == "params":
        return ParameterCost()
    if params.target == "macs":
        return MacCost((params.target_seqlen + 1) / 2)
    profile = latency.latency_profile(layers[0].geometry, device, dtype, params.target_seqlen,
                              params.target_batch, cache_dir)
    return LatencyCost(UnitCosts(**asdict(profile.attention)), UnitCosts(**asdict(profile.mlp)))


def reported_currencies(params: Any, layers: list[LayerAdapter], device: torch.device,
                        dtype: torch.dtype, cache_dir: str, budget_model: CostModel
                        ) -> tuple[dict[str, CostModel], dict[str, str]]:
    """Cost models of all three currencies, for the achieved fractions of every run.

    The budget's own model is reused; latency is profiled (once per device and geometry,
    then cached) whatever the target. When no profile can be made, the reason is returned
    instead of a latency model, so the run records why its latency fraction is missing.
    """
    models: dict[str, CostModel] = {"params": ParameterCost(),
                                    "macs": MacCost((params.target_seqlen + 1) / 2),
                                    budget_model.name: budget_model}
    missing: dict[str, str] = {}
    if "latency" not in models:
        try:
            models["latency"] = cost_model_for(replace(params, target="latency"), layers,
                                               device, dtype, cache_dir)
        except PrunelabError as error:
            missing["latency"] = str(error)
    return models, missing


def zero_scores(layers: list[LayerAdapter]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Placeholder scores for pools that are only priced, never ranked."""
    return ([torch.zeros(layer.geometry.num_heads) for layer in layers],
            [torch.zeros(layer.geometry.intermediate_size) for layer in layers])


def total_cost(layers: list[LayerAdapter], cost_model: CostModel) -> float:
    """Cost of every prunable unit of ``layers`` (removed sub-layers cost nothing)."""
    return sum(p.total_cost for p in build_pools(layers, *zero_scores(layers), cost_model))


def achieved_fractions(before: dict[str, float], layers_after: list[LayerAdapter],
                       models: dict[str, CostModel]) -> dict[str, float]:
    """Fraction of each currency's cost removed, from the totals ``before`` pruning."""
    return {name: 1 - total_cost(layers_after, model) / before[name]
            for name, model in models.items()}
