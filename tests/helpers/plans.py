"""Plans and masks for tests: the dense plan, and a plan applied to an unpruned model."""

from __future__ import annotations

from prunelab.models.adapters import ModelAdapter
from prunelab.models.plan import LayerPlan, PruningPlan
from prunelab.models.surgery import Means, mask_block


def keep_all(adapter: ModelAdapter) -> PruningPlan:
    """The plan that keeps everything (dense)."""
    return PruningPlan([LayerPlan(list(range(g.num_heads)), list(range(g.intermediate_size)))
                        for g in (layer.geometry for layer in adapter.layers)])


def mask_model(adapter: ModelAdapter, plan: PruningPlan, means: Means | None = None) -> None:
    """Apply ``plan`` to the original architecture in place (what surgery must equal)."""
    for i, (layer, keep) in enumerate(zip(adapter.layers, plan.layers)):
        mask_block(layer, keep, means[i] if means else (None, None))
