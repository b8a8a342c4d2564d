"""``block``: every block loses the same fraction; its heads and channels share one ranking.

This is LLM-BIP's per-block schedule. A block's units are merged by score across its
attention and MLP pools, and each unit's priority is the block's removed cost at that unit's
midpoint over the block's target, so one shared walk removes from every block in step and
stops at the exact global budget (within half a unit), while the split between heads and
channels inside a block follows the scores. Scores must therefore be comparable between a
block's heads and channels (LLM-BIP's are both "change of the block output per parameter").
"""

from __future__ import annotations

from prunelab.errors import PrunelabError
from prunelab.registry import SCHEDULES
from prunelab.schedules.base import Group, Schedule
from prunelab.schedules.pools import Pool


@SCHEDULES.register("block")
class Block(Schedule):
    """Same fraction per block; heads and channels of a block ranked together."""

    def pool_targets(self, pools: list[Pool], num_layers: int) -> list[float]:
        raise PrunelabError("schedule=block splits each block between heads and channels from "
                            "the scores, so it cannot give per-module fractions in advance as "
                            "sequential methods (wanda_sp) need. Use schedule=uniform.")

    def _groups(self, pools: list[Pool], protected: list[bool],
                num_layers: int) -> dict[str, Group]:
        if self.params.attention_ratio is not None:
            raise PrunelabError("schedule=block ranks a block's heads and channels together, so "
                                "attention_ratio does not apply; use schedule=uniform for a "
                                "fixed split.")
        budget = self.params.ratio * sum(p.total_cost for p in pools)
        open_cost = sum(p.total_cost for p, closed in zip(pools, protected) if not closed)
        self._check_open(budget, open_cost)
        fraction = budget / open_cost if open_cost else 0.0
        priorities = [[float("inf")] * p.size for p in pools]
        for layer in sorted({p.layer for p in pools}):
            members = [i for i, p in enumerate(pools) if p.layer == layer and not protected[i]]
            goal = fraction * sum(pools[i].total_cost for i in members)
            if goal <= 0:
                continue
            merged = sorted((float(pools[i].scores[unit]), i, pos)
                            for i in members for pos, unit in enumerate(pools[i].order))
            removed = 0.0
            for _, i, pos in merged:
                cost = pools[i].costs[pos]
                priorities[i][pos] = (removed + cost / 2) / goal
                removed += cost
        return {"all": (list(range(len(pools))), budget, priorities)}
