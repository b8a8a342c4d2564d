"""What to keep: per block, the kept query heads and MLP channels (original indices).

A plan is the single hand-off between allocation and surgery, recorded in results.json and
beside every saved pruned model. A KV head is kept exactly when one of its query heads is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass
class LayerPlan:
    """Kept units of one block; empty lists remove the whole sub-layer."""

    heads: list[int]
    channels: list[int]


@dataclass
class PruningPlan:
    """Kept units of every block."""

    layers: list[LayerPlan]

    @classmethod
    def keep_all(cls, adapter) -> PruningPlan:
        """The plan that keeps everything (dense)."""
        return cls([LayerPlan(list(range(g.num_heads)), list(range(g.intermediate_size)))
                    for g in (layer.geometry for layer in adapter.layers)])

    @classmethod
    def from_removed(cls, adapter, removed: list[dict[str, set[int]]]) -> PruningPlan:
        """Build from per-layer removed sets ``{"attention": {...}, "mlp": {...}}``."""
        layers = []
        for layer, gone in zip(adapter.layers, removed):
            g = layer.geometry
            layers.append(LayerPlan(
                [h for h in range(g.num_heads) if h not in gone.get("attention", ())],
                [c for c in range(g.intermediate_size) if c not in gone.get("mlp", ())],
            ))
        return cls(layers)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"layers": [asdict(layer) for layer in self.layers]}

    @classmethod
    def from_dict(cls, data: dict) -> PruningPlan:
        """Inverse of :meth:`to_dict`."""
        return cls([LayerPlan(list(d["heads"]), list(d["channels"])) for d in data["layers"]])


def channel_index(heads: list[int], head_dim: int) -> torch.Tensor:
    """Indices of the ``A`` channels (o_proj input columns) belonging to ``heads``."""
    if not heads:
        return torch.zeros(0, dtype=torch.long)
    base = torch.tensor(heads, dtype=torch.long)[:, None] * head_dim
    return (base + torch.arange(head_dim)).flatten()
