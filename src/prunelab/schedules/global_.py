"""``global``: rank all units of the model together (FLAP's AL-AM / AL-MM).

Units are removed lowest score first across every block, each weighted by its parameter cost,
until the removed cost reaches the budget, so blocks and modules get adaptive ratios. Scores
must be comparable across blocks: methods standardise or normalise them when asked
(``comparable_scores``). A block may lose every unit (no floor, as in the FLAP reference)
unless ``min_heads`` / ``min_channels`` are set.
"""

from __future__ import annotations

from prunelab.registry import SCHEDULES
from prunelab.schedules.base import Group, Schedule
from prunelab.schedules.pools import Pool


@SCHEDULES.register("global")
class Global(Schedule):
    """One cost-weighted ranking over all blocks (or one per module with attention_ratio)."""

    comparable_scores = True

    def _groups(self, pools: list[Pool], protected: list[bool],
                num_layers: int) -> dict[str, Group]:
        groups = {}
        for key, budget in self._module_budgets(pools, self.params.ratio).items():
            members = self._group_members(pools, key)
            priorities = [
                [float("inf")] * pools[i].size if protected[i]
                else [float(pools[i].scores[u]) for u in pools[i].order]
                for i in members
            ]
            groups[key] = (members, budget, priorities)
        return groups
