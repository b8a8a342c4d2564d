"""``uniform``: every block loses the same fraction of each module (FLAP's UL-UM / UL-MM).

Priorities are the fraction of a pool's target already removed (at the unit's midpoint), so
the shared walk removes from every pool in step and stops at the exact global budget: each
pool ends within one unit of the common fraction, and the total within half a unit. With
``attention_ratio`` set, attention and MLP are two selections with a fixed split (UL-MM).
"""

from __future__ import annotations

from prunelab.errors import PrunelabError
from prunelab.schedules.base import SCHEDULES, Group, Schedule
from prunelab.schedules.pools import Pool


def fill_priorities(pool: Pool, target: float) -> list[float]:
    """Priority of each unit along the order: removed cost at its midpoint / target cost."""
    if target <= 0:
        return [float("inf")] * pool.size
    goal = target * pool.total_cost
    priorities, before = [], 0.0
    for cost in pool.costs:
        priorities.append((before + cost / 2) / goal)
        before += cost
    return priorities


@SCHEDULES.register("uniform")
class Uniform(Schedule):
    """Same ratio in every (unprotected) block, for heads and for channels."""

    def pool_targets(self, pools: list[Pool], num_layers: int) -> list[float]:
        protected = [self._protected(p.layer, num_layers) for p in pools]
        targets = [0.0] * len(pools)
        for key, budget in self._module_budgets(pools, self.params.ratio).items():
            members = self._group_members(pools, key)
            open_cost = sum(pools[i].total_cost for i in members if not protected[i])
            if budget > 0 and open_cost == 0:
                raise PrunelabError("Every block is protected: nothing can be pruned. "
                                    "Lower protect_first / protect_last.")
            for i in members:
                targets[i] = 0.0 if protected[i] else budget / open_cost
        return targets

    def _groups(self, pools: list[Pool], protected: list[bool],
                num_layers: int) -> dict[str, Group]:
        targets = self.pool_targets(pools, num_layers)
        groups = {}
        for key, budget in self._module_budgets(pools, self.params.ratio).items():
            members = self._group_members(pools, key)
            priorities = [fill_priorities(pools[i], targets[i]) for i in members]
            groups[key] = (members, budget, priorities)
        return groups
