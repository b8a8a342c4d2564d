"""ShortGPT (Men et al., 2024): remove the decoder blocks that change their input least.

"ShortGPT: Layers in Large Language Models are More Redundant Than You Expect" scores each
block by its Block Influence, ``BI_l = 1 - E_tokens[cos(x_l, x_{l+1})]``, the mean cosine
similarity of the hidden states entering and leaving block ``l`` over the calibration tokens,
and removes the blocks with the lowest BI whole. ``method.blocks=n`` removes ``n`` blocks;
without it, ``schedule.ratio`` is met by whole blocks (the nearest count that does not exceed
it). A removed block executes nothing: its output is its input. No bias compensation, no
recovery (the paper evaluates the plain removal).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prunelab.calibration.runner import LayerStats
from prunelab.calibration.statistics import STATISTICS, Collector
from prunelab.methods import BlockScores, PruningMethod, register
from prunelab.models.adapters import LayerAdapter


@STATISTICS.register("block_cosine")
class BlockCosine(Collector):
    """Mean over tokens of ``cos(x_in, x_out)`` of a decoder block's input and output."""

    name = "block_cosine"

    def attach(self) -> None:
        self.total, self.count = 0.0, 0

        def hook(_module, args, kwargs, output):
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = output[0] if isinstance(output, tuple) else output
            cosine = F.cosine_similarity(x_in.detach().double(), x_out.detach().double(), dim=-1)
            self.total += float(cosine.sum())
            self.count += cosine.numel()

        self._handles.append(self.layer.layer.register_forward_hook(hook, with_kwargs=True))

    def result(self) -> dict[str, torch.Tensor]:
        return {"mean_cosine": torch.tensor([self.total / self.count], dtype=torch.float64)}


@dataclass
class ShortGPTParams:
    """How many blocks to remove (null: as many as ``schedule.ratio`` allows)."""

    blocks: int | None = None

    def check(self) -> list[str]:
        if self.blocks is not None and self.blocks < 1:
            return [f"blocks must be >= 1 or null (use schedule.ratio), got {self.blocks}"]
        return []


def block_influence(stats: LayerStats) -> float:
    """``BI = 1 - E[cos(x_in, x_out)]`` of one block."""
    return 1.0 - float(stats["block_cosine"]["mean_cosine"])


@register("shortgpt")
class ShortGPT(PruningMethod):
    """Whole-block removal by Block Influence."""

    Params = ShortGPTParams
    removes = "blocks"
    statistics = ("block_cosine",)
    budget_params = ("blocks",)

    def score_blocks(self, layers: list[LayerAdapter], stats: list[LayerStats]) -> BlockScores:
        return BlockScores([block_influence(s) for s in stats], self.params.blocks)
