"""``explicit``: per-block ratios given as lists (e.g. a ratio profile from a paper).

``ratios[l]`` applies to both modules of block ``l``; ``attention_ratios`` / ``mlp_ratios``
override it per module. The global ratio asked is the cost-weighted mean of the lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prunelab.errors import PrunelabError
from prunelab.registry import SCHEDULES
from prunelab.schedules.base import Group, Schedule, ScheduleParams, fill_priorities
from prunelab.schedules.pools import ATTENTION, Pool


@dataclass
class ExplicitParams(ScheduleParams):
    """Per-block ratio lists (``ratio`` is ignored: the lists define the budget)."""

    ratios: list[float] = field(default_factory=list)
    attention_ratios: list[float] | None = None
    mlp_ratios: list[float] | None = None

    def check(self) -> list[str]:
        problems = [p for p in super().check() if not p.startswith("ratio ")]
        for name in ("ratios", "attention_ratios", "mlp_ratios"):
            values = getattr(self, name) or []
            if any(not 0.0 <= v <= 1.0 for v in values):
                problems.append(f"{name} must lie in [0, 1], got {values}")
        if not self.ratios and not (self.attention_ratios and self.mlp_ratios):
            problems.append("give ratios (one per block) or attention_ratios and mlp_ratios")
        return problems


@SCHEDULES.register("explicit")
class Explicit(Schedule):
    """Each block and module loses the fraction its list says."""

    Params = ExplicitParams

    def _target(self, pool: Pool, num_layers: int) -> float:
        specific = self.params.attention_ratios if pool.module == ATTENTION \
            else self.params.mlp_ratios
        values = specific or self.params.ratios
        if len(values) != num_layers:
            raise PrunelabError(f"explicit schedule: {len(values)} ratios for {num_layers} "
                                "blocks. Give one ratio per block.")
        return values[pool.layer]

    def pool_targets(self, pools: list[Pool], num_layers: int) -> list[float]:
        return [0.0 if self._protected(p.layer, num_layers) else self._target(p, num_layers)
                for p in pools]

    def _groups(self, pools: list[Pool], protected: list[bool],
                num_layers: int) -> dict[str, Group]:
        targets = self.pool_targets(pools, num_layers)
        budget = sum(t * p.total_cost for t, p in zip(targets, pools))
        return {"all": (list(range(len(pools))),
                        budget, [fill_priorities(p, t * p.total_cost)
                                for p, t in zip(pools, targets)])}
