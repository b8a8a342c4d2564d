"""LLM-Pruner (Ma, Fang, Wang, NeurIPS 2023), block-wise: first-order Taylor group importance.

Each coupled group is scored by the loss change its removal would cause to first order,
from the gradient of the next-token loss on a few calibration samples (the stage's
``gradients`` capability, a whole-model backward on the unpruned model). Per projection row
(q/k/v, gate/up) or column (o, down), with ``S = W * dL/dW``:

- ``element1`` (LLM-Pruner's ``--taylor param_first``, its scripts' default):
  ``sum_elements |S|``;
- ``vector`` (``--taylor vectorize``): ``|sum_elements S|``.

A group's importance is the sum over its rows and columns (LLM-Pruner's ``sum`` reduction): a
query head = its ``head_dim`` q rows + o columns + its share of its KV head (the KV head's
k and v rows divided by the query heads reading it: with one query head per KV head, as in
LLaMA-7B, that is the whole k/v rows, exactly LLM-Pruner's group); an MLP channel = its gate
and up rows + its down column. LLM-Pruner prunes the same ratio in every block but the first
four and the last two of LLaMA-7B's 32 (``conf/schedule/llm_pruner.yaml``:
``protect_first=4``, ``protect_last=2``); no bias compensation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from prunelab.calibration.runner import LayerStats
from prunelab.methods import PruningMethod, UnitScores, register
from prunelab.models.adapters import LayerAdapter


@dataclass
class LLMPrunerParams:
    """Which first-order Taylor criterion scores a row or column."""

    taylor: Literal["element1", "vector"] = "element1"


def taylor_importance(weight: torch.Tensor, grad: torch.Tensor, dim: int,
                      taylor: str) -> torch.Tensor:
    """Per output row (``dim=1``) or input column (``dim=0``): the Taylor criterion."""
    salience = weight.detach().double().cpu() * grad.double().cpu()
    return salience.abs().sum(dim) if taylor == "element1" else salience.sum(dim).abs()


@register("llm_pruner")
class LLMPruner(PruningMethod):
    """LLM-Pruner's block-wise structured baseline (Taylor importance of coupled groups)."""

    Params = LLMPrunerParams
    needs = frozenset({"gradients"})

    def score_block(self, index: int, layer: LayerAdapter, stats: LayerStats,
                    comparable: bool) -> UnitScores:
        grads, taylor = stats["gradients"], self.params.taylor
        g = layer.geometry

        def rows(name: str) -> torch.Tensor:
            return taylor_importance(getattr(layer, name).weight, grads[name], 1, taylor)

        def columns(name: str) -> torch.Tensor:
            return taylor_importance(getattr(layer, name).weight, grads[name], 0, taylor)

        query = (rows("q_proj") + columns("o_proj")).view(g.num_heads, -1).sum(1)
        kv = (rows("k_proj") + rows("v_proj")).view(g.num_kv_heads, -1).sum(1)
        kv_of = torch.tensor(layer.kv_head_of())
        readers = torch.bincount(kv_of, minlength=g.num_kv_heads).double()
        heads = query + kv[kv_of] / readers[kv_of]
        channels = rows("gate_proj") + rows("up_proj") + columns("down_proj")
        return UnitScores(heads, channels)
