"""Synthetic latency profiles, so budget tests do not depend on this machine's timings."""

from __future__ import annotations

from prunelab.eval import latency
from prunelab.schedules.costs import LatencyCost, ShapeCosts, UnitCosts

#: seconds per call: a head, a KV head, the attention's fixed part; a channel, the MLP's
ATTENTION = latency.SubLayerFit(3e-6, 2e-6, 40e-6)
MLP = latency.SubLayerFit(1e-7, 0.0, 25e-6)


def synthetic_cost(fixed: float = 0.0, total: float = 1.0) -> LatencyCost:
    """A one-shape latency currency whose unit prices are the synthetic seconds / ``total``."""
    return LatencyCost((ShapeCosts("1x128", 1.0, UnitCosts(*vars(ATTENTION).values()),
                                   UnitCosts(*vars(MLP).values()), fixed, total),))


def synthetic_profiles(head_s: float = 2e-4, overhead_s: float = 1e-4):
    """A stand-in for latency.shape_profile: the synthetic fits, the model's time their sum
    over the blocks plus ``head_s + overhead_s``, and the decode step a tenth of each."""

    def profile(model, adapter, device, shape, vocab_size, cache_dir):
        scale = 0.1 if shape.kind == "decode" else shape.batch * shape.seqlen / 128
        attention, mlp = (latency.SubLayerFit(*(scale * v for v in vars(fit).values()))
                          for fit in (ATTENTION, MLP))
        blocks = sum(attention.fixed + attention.per_unit * layer.geometry.num_heads
                     + attention.per_group * layer.geometry.num_kv_heads
                     + mlp.fixed + mlp.per_unit * layer.geometry.intermediate_size
                     for layer in adapter.layers)
        return latency.ShapeProfile(shape, attention, mlp,
                                    blocks + scale * (head_s + overhead_s), scale * head_s)

    return profile
