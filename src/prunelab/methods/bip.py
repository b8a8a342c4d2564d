"""LLM-BIP (Wu, arXiv 2412.06419): block-wise forward importance propagation.

The paper states that a unit's importance is its influence on the output of its own block,
approximated in one forward pass (no gradients) by an upper bound from Lipschitz continuity,
without a Lipschitz assumption on self-attention. Its code is not public; what follows is
prunelab's formulation (METHODS.md), computed from one calibration pass of the unpruned model:

- MLP channel j: removing it changes the block output by exactly ``-W_down[:, j] a_j``, so
  ``I_j = E_tokens |a_j| * ||W_down[:, j]||_2``.
- Query head g: removing it changes the post-attention stream by ``dH = -W_o[:, S_g] A_g``,
  which then passes through the MLP (Lipschitz constant ``L``), so
  ``I_g = (1 + L) * E_tokens ||W_o[:, S_g] A_g||_2``. A KV head goes with its last query head.
- ``lipschitz`` estimates ``L`` of ``x -> MLP(n2(x))`` per block:
  ``bound``: ``||W_d|| (max|act'(g) u| ||W_g|| + max|act(g)| ||W_u||) max|w_n2| / min rms(h)``
  from spectral norms and the activation ranges observed on the calibration tokens;
  ``empirical``: ``sum ||MLP(h + dH_g) - MLP(h)|| / sum ||dH_g||`` over the observed
  head-removal directions (first 1024 tokens of each block); ``none``: ``L = 0``.
- Families with post-norms (Gemma-3: ``h = x + post(o_proj(A))``, the same around the MLP):
  a unit's change passes through the post-norm, to first order ``gamma * delta / rms(o)``, so
  a head's is ``E ||gamma * W_o[:, S_g] A_g|| / rms(o)``, a channel's
  ``E[|a_j| / rms(o)] ||gamma * W_down[:, j]||``, and the bound gains the MLP post-norm's
  factor ``max|gamma| / min rms(o)``.
- Heads and channels are ranked by importance per parameter (their own q/o or gate/up/down
  weights); ``schedule=block`` (default) ranks them together within each block, and
  ``schedule=global`` divides every score by its block's mean output norm ``E||y_l||``.
- Bias compensation as in FLAP (default on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from prunelab.calibration.runner import LayerStats
from prunelab.methods import PruningMethod, UnitScores, register
from prunelab.models.adapters import LayerAdapter


@dataclass
class BIPParams:
    """LLM-BIP's options."""

    lipschitz: Literal["bound", "empirical", "none"] = "bound"
    bias_compensation: bool = True


def spectral_norm(weight: torch.Tensor) -> float:
    """Largest singular value of a weight matrix (float64)."""
    return float(torch.linalg.matrix_norm(weight.detach().double().cpu(), ord=2))


def lipschitz_bound(layer: LayerAdapter, ranges: dict[str, torch.Tensor]) -> float:
    """Closed-form bound of the MLP sub-layer's local Lipschitz constant (see module doc)."""
    mlp = spectral_norm(layer.down_proj.weight) * (
        float(ranges["max_dact_u"]) * spectral_norm(layer.gate_proj.weight)
        + float(ranges["max_act"]) * spectral_norm(layer.up_proj.weight))
    bound = mlp * _norm_factor(layer, layer.mlp_norm, ranges["min_rms"])
    post = layer.mlp_post_norm
    return bound if post is None else bound * _norm_factor(layer, post, ranges["min_out_rms"])


def _norm_factor(layer: LayerAdapter, norm: torch.nn.Module, min_rms: torch.Tensor) -> float:
    """An RMSNorm's local Lipschitz bound: its largest scale over the smallest input RMS."""
    return float(layer.norm_scale(norm).detach().abs().max()) / float(min_rms)


def lipschitz_empirical(response: dict[str, torch.Tensor]) -> float:
    """Observed MLP output change per unit of input change along head-removal directions."""
    return float(response["output_change"] / response["input_change"])


@register("bip")
class BIP(PruningMethod):
    """Block-wise forward importance propagation."""

    Params = BIPParams
    # all estimators' statistics, so one calibration serves every ablation
    statistics = ("attn_input", "mlp_input", "head_output_norm", "block_output_norm",
                  "mlp_act_ranges", "mlp_response", "mlp_input_over_rms")

    def lipschitz(self, layer: LayerAdapter, stats: LayerStats) -> float:
        """``L`` of this block's MLP under the configured estimator."""
        if self.params.lipschitz == "bound":
            return lipschitz_bound(layer, stats["mlp_act_ranges"])
        if self.params.lipschitz == "empirical":
            return lipschitz_empirical(stats["mlp_response"])
        return 0.0

    def importance(self, layer: LayerAdapter, stats: LayerStats
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Expected change of the block output per head and per channel (not per cost)."""
        down = layer.down_proj.weight.detach().double().cpu()
        post = layer.mlp_post_norm
        if post is None:
            channels = stats["mlp_input"]["mean_abs"] * down.norm(dim=0)
        else:
            gamma = layer.norm_scale(post).detach().double().cpu()
            channels = stats["mlp_input_over_rms"]["mean"] * (gamma[:, None] * down).norm(dim=0)
        heads = (1 + self.lipschitz(layer, stats)) * stats["head_output_norm"]["mean_norm"]
        return heads, channels

    def score_block(self, index: int, layer: LayerAdapter, stats: LayerStats,
                    comparable: bool) -> UnitScores:
        heads, channels = self.importance(layer, stats)
        heads = heads / layer.parameters_per_head()
        channels = channels / layer.parameters_per_channel()
        if comparable:
            scale = float(stats["block_output_norm"]["mean_norm"])
            heads, channels = heads / scale, channels / scale
        return UnitScores(heads, channels)
