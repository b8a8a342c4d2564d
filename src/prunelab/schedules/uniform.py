"""``uniform``: every block loses the same fraction of each module (FLAP's UL-UM / UL-MM).

Priorities are the fraction of a pool's target already removed (at the unit's midpoint), so
the shared walk removes from every pool in step and stops at the exact global budget: each
pool ends within one unit of the common fraction, and the total within half a unit. With
``attention_ratio`` set, attention and MLP are two selections with a fixed split (UL-MM).
"""

from __future__ import annotations

from prunelab.registry import SCHEDULES
from prunelab.schedules.base import Group, Schedule, fill_priorities
from prunelab.schedules.pools import Pool


@SCHEDULES.register("uniform")
class Uniform(Schedule):
    """Same ratio in every (unprotected) block, for heads and for channels."""

    def pool_targets(self, pools: list[Pool], num_layers: int) -> list[float]:
        protected = [self._protected(p.layer, num_layers) for p in pools]
        targets = [0.0] * len(pools)
        for key, budget in self._module_budgets(pools, self.params.ratio).items():
            members = self._group_members(pools, key)
            open_cost = sum(pools[i].total_cost for i in members if not protected[i])
            self._check_open(budget, open_cost)
            for i in members:
                targets[i] = 0.0 if protected[i] else budget / open_cost
        return targets

    def _groups(self, pools: list[Pool], protected: list[bool],
                num_layers: int) -> dict[str, Group]:
        targets = self.pool_targets(pools, num_layers)
        groups = {}
        for key, budget in self._module_budgets(pools, self.params.ratio).items():
            members = self._group_members(pools, key)
            priorities = [fill_priorities(pools[i], targets[i] * pools[i].total_cost)
                          for i in members]
            groups[key] = (members, budget, priorities)
        return groups
