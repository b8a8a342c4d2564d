"""The schedule contract, the shared selection routine, and the registry.

Every schedule reduces to one routine, :func:`select`: each removable unit gets a priority
(non-decreasing along its pool's removal order), all units are walked in priority order, and
the walk stops where the removed cost is closest to the budget. The achieved cost is
therefore within half of one unit's cost of the budget, and every pool loses a prefix of its
removal order (its lowest-scored units). Schedules differ only in the priorities and budgets.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, final

from prunelab.errors import PrunelabError
from prunelab.schedules.pools import ATTENTION, HEAD_GROUPS, MLP, Pool


@dataclass
class ScheduleParams:
    """Fields every schedule has."""

    #: fraction to remove: of the prunable cost (q/k/v/o, gate/up/down) in params and macs,
    #: of the whole model's measured time in latency and latency_decode
    ratio: float = 0.2
    #: the cost the ratio is a fraction of: parameters, MACs per token, measured prefill time
    #: or measured time per decode step (schedules/targets.py)
    target: Literal["params", "macs", "latency", "latency_decode"] = "params"
    target_seqlen: int = 128  # attention context of macs; latency's shape when none is given
    target_batch: int = 1  # latency's batch when no shape is given
    #: latency's prefill shapes [[batch, seqlen], ...]; None: the benchmark's speed grid
    target_shapes: list[list[int]] | None = None
    target_weights: list[float] | None = None  # each shape's weight in the mix; None: equal
    #: latency_decode's [prompt, new tokens]; None: the benchmark's decode setting
    target_decode: list[int] | None = None
    attention_ratio: float | None = None  # fixed module split: fraction of attention removed
    protect_first: int = 0  # blocks at the start that are never pruned
    protect_last: int = 0  # blocks at the end that are never pruned
    min_heads: int = 0  # floor: query heads every pruned block keeps
    min_channels: int = 0  # floor: MLP channels every pruned block keeps
    #: attention units: single query heads, one head per KV head together (groups stay even,
    #: llama.cpp needs no padding), or whole KV groups (schedules/pools.py)
    head_groups: Literal["any", "even", "whole"] = "any"

    def check(self) -> list[str]:
        problems = []
        if not 0.0 <= self.ratio < 1.0:
            problems.append(f"ratio must be in [0, 1), got {self.ratio}")
        if self.attention_ratio is not None and not 0.0 <= self.attention_ratio <= 1.0:
            problems.append(f"attention_ratio must be in [0, 1], got {self.attention_ratio}")
        for name in ("protect_first", "protect_last", "min_heads", "min_channels"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if self.head_groups not in HEAD_GROUPS:
            problems.append(f"head_groups must be one of {', '.join(HEAD_GROUPS)}, "
                            f"got {self.head_groups!r}")
        if self.target_seqlen < 1 or self.target_batch < 1:
            problems.append("target_seqlen and target_batch must be >= 1")
        problems += [f"target_shapes entries are [batch, seqlen] with both >= 1, got {entry}"
                     for entry in self.target_shapes or [] if len(entry) != 2 or min(entry) < 1]
        if self.target_weights is not None and (
                len(self.target_weights) != len(self.target_shapes or [])
                or min(self.target_weights, default=0) < 0 or sum(self.target_weights) <= 0):
            problems.append(f"target_weights needs one weight >= 0 per target_shapes entry "
                            f"(not all zero), got {self.target_weights}")
        if self.target_decode is not None and (len(self.target_decode) != 2
                                               or min(self.target_decode) < 1):
            problems.append(f"target_decode is [prompt, new tokens] with both >= 1, got "
                            f"{self.target_decode}")
        return problems


@dataclass
class Allocation:
    """Removed units per pool, and per selection group its budget and removed cost."""

    removed: list[list[int]]
    budgets: dict[str, float]
    removed_costs: dict[str, float]


#: One selection: the pools it covers, its budget, and each pool's priorities along its order.
Group = tuple[list[int], float, list[list[float]]]


class Schedule(ABC):
    """Turns pools of scored units into removed units under a budget.

    Subclasses fill :meth:`_groups` (priorities and budgets); :meth:`allocate` applies floors,
    protected blocks and the shared selection, so every schedule meets its budget the same way.
    """

    Params: ClassVar[type] = ScheduleParams
    #: True when scores must be comparable across blocks (global ranking).
    comparable_scores: ClassVar[bool] = False

    def __init__(self, params: Any):
        self.params = params

    @final
    def allocate(self, pools: list[Pool], num_layers: int) -> Allocation:
        """Removed units per pool, every group within half a unit of its budget."""
        protected = [self._protected(p.layer, num_layers) for p in pools]
        groups = self._groups(pools, protected, num_layers)
        floors = [self.floor(p) for p in pools]  # after _groups, which may decide them
        removed: list[list[int]] = [[] for _ in pools]
        budgets, costs = {}, {}
        for key, (members, budget, priorities) in groups.items():
            chosen, cost = select([pools[i] for i in members], priorities, budget,
                                  [floors[i] for i in members], repr(self.params))
            for i, units in zip(members, chosen):
                removed[i] = units
            budgets[key], costs[key] = budget, cost
        return Allocation(removed, budgets, costs)

    def report(self) -> dict[tuple[int, str], dict]:
        """Per (block, module), what the last allocation decided beyond the removed units."""
        return {}

    def floor(self, pool: Pool) -> int:
        """Units of ``pool`` that must be kept (``min_heads`` / ``min_channels``)."""
        floor = self.params.min_heads if pool.module == ATTENTION else self.params.min_channels
        return min(pool.units_for(floor), pool.size)

    def pool_targets(self, pools: list[Pool], num_layers: int) -> list[float]:
        """Fraction of each pool to remove, for block-by-block (sequential) allocation."""
        raise PrunelabError(
            f"schedule {type(self).__name__.lower()} ranks all blocks together, so it cannot "
            "allocate block by block as sequential methods (wanda_sp) need. Use "
            "schedule=uniform or schedule=explicit."
        )

    def _protected(self, layer: int, num_layers: int) -> bool:
        return layer < self.params.protect_first or layer >= num_layers - self.params.protect_last

    @staticmethod
    def _check_open(budget: float, open_cost: float) -> None:
        """Refuse a budget when the protected blocks leave nothing to prune."""
        if budget > 0 and open_cost <= 0:
            raise PrunelabError("Every block is protected: nothing can be pruned. "
                                "Lower protect_first / protect_last.")

    def _module_budgets(self, pools: list[Pool], ratio: float) -> dict[str, float]:
        """Budget per group key: one shared budget, or the fixed split of ``attention_ratio``."""
        total = sum(p.total_cost for p in pools)
        if self.params.attention_ratio is None:
            return {"all": ratio * total}
        attn = sum(p.total_cost for p in pools if p.module == ATTENTION)
        mlp = total - attn
        attn_budget = self.params.attention_ratio * attn
        mlp_budget = ratio * total - attn_budget
        if mlp_budget < 0 or mlp_budget > mlp:
            raise PrunelabError(
                f"attention_ratio={self.params.attention_ratio} with ratio={ratio} needs the MLPs "
                f"to lose {mlp_budget / max(mlp, 1):.3f} of their cost, outside [0, 1]. "
                "Choose an attention_ratio closer to the ratio."
            )
        return {ATTENTION: attn_budget, MLP: mlp_budget}

    @staticmethod
    def _group_members(pools: list[Pool], key: str) -> list[int]:
        return [i for i, p in enumerate(pools) if key == "all" or p.module == key]

    @abstractmethod
    def _groups(self, pools: list[Pool], protected: list[bool],
                num_layers: int) -> dict[str, Group]:
        """Selections to run, by key (``all``, or ``attention`` and ``mlp``)."""


def fill_priorities(pool: Pool, goal: float) -> list[float]:
    """Priority along a pool's order: its removed cost at the unit's midpoint / ``goal``.

    Pools walked together by these priorities lose the same fraction of their goals at
    every step of the walk, so each ends within one unit of its goal.
    """
    if goal <= 0:
        return [math.inf] * pool.size
    priorities, before = [], 0.0
    for cost in pool.costs:
        priorities.append((before + cost / 2) / goal)
        before += cost
    return priorities


def select(pools: list[Pool], priorities: list[list[float]], budget: float,
           floors: list[int], describe: str) -> tuple[list[list[int]], float]:
    """Remove units in priority order until the removed cost is closest to ``budget``."""
    candidates = []
    for p, (pool, prio) in enumerate(zip(pools, priorities)):
        for pos in range(pool.size - floors[p]):
            if math.isfinite(prio[pos]):
                candidates.append((prio[pos], p, pos))
    candidates.sort()
    removable = sum(pools[p].costs[pos] for _, p, pos in candidates)
    largest = max((pools[p].costs[pos] for _, p, pos in candidates), default=0.0)
    if budget > removable + largest / 2:
        raise PrunelabError(
            f"The budget of {budget:,.6g} (cost units of the schedule's target) cannot be met: "
            f"only {removable:,.6g} is removable under {describe}. Lower the ratio, the floors "
            "or the protected blocks."
        )
    cumulative, best_k, best_gap = 0.0, 0, abs(budget)
    for k, (_, p, pos) in enumerate(candidates, start=1):
        cumulative += pools[p].costs[pos]
        gap = abs(budget - cumulative)
        if gap < best_gap:
            best_k, best_gap = k, gap
        if cumulative > budget:
            break
    counts = [0] * len(pools)
    cost = 0.0
    for _, p, pos in candidates[:best_k]:
        counts[p] = max(counts[p], pos + 1)
    chosen = []
    for p, pool in enumerate(pools):
        chosen.append(sorted(pool.order[:counts[p]]))
        cost += sum(pool.costs[:counts[p]])
    return chosen, cost
