"""What to keep: per block, the kept query heads and MLP channels (original indices).

A plan is the single hand-off between allocation and surgery, recorded in results.json and
beside every saved pruned model. A KV head is kept exactly when one of its query heads is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

#: The plan saved beside a pruned model (its kept heads and channels, and job details).
PLAN_FILE = "pruning_plan.json"
#: The plan file's field naming the model the pruned one was cut from (its loading source).
SOURCE_FIELD = "source_model"


@dataclass
class LayerPlan:
    """Kept units of one block; empty lists remove the whole sub-layer."""

    heads: list[int]
    channels: list[int]

    @classmethod
    def from_removed(cls, num_heads: int, num_channels: int,
                     gone: dict[str, set[int]]) -> LayerPlan:
        """Keep what ``gone`` (``{"attention": {...}, "mlp": {...}}``) does not remove."""
        return cls([h for h in range(num_heads) if h not in gone.get("attention", ())],
                   [c for c in range(num_channels) if c not in gone.get("mlp", ())])


@dataclass
class PruningPlan:
    """Kept units of every block."""

    layers: list[LayerPlan]

    @classmethod
    def from_removed(cls, adapter, removed: list[dict[str, set[int]]]) -> PruningPlan:
        """Build from per-layer removed sets ``{"attention": {...}, "mlp": {...}}``."""
        return cls([LayerPlan.from_removed(layer.geometry.num_heads,
                                           layer.geometry.intermediate_size, gone)
                    for layer, gone in zip(adapter.layers, removed)])

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"layers": [asdict(layer) for layer in self.layers]}

    def removed_blocks(self) -> list[int]:
        """Blocks that keep neither heads nor channels: they execute nothing."""
        return [i for i, layer in enumerate(self.layers) if not layer.heads and not layer.channels]


def channel_index(heads: list[int], head_dim: int) -> torch.Tensor:
    """Indices of the ``A`` channels (o_proj input columns) belonging to ``heads``."""
    if not heads:
        return torch.zeros(0, dtype=torch.long)
    base = torch.tensor(heads, dtype=torch.long)[:, None] * head_dim
    return (base + torch.arange(head_dim)).flatten()
