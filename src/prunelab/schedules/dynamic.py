"""``dynamic``: how much each sub-layer loses follows its importance as a whole.

This is the allocation of interaction-guided pruning ("Let LLM Tell What to Prune and How
Much to Prune"). The paper states only that every block gets its own ratio from a target
ratio, less important modules losing more; the mapping is prunelab's formulation:

- Each sub-layer (attention or MLP of a block) has a module score ``s_m`` (higher = more
  important; ``Pool.module_score``), turned into a standard score ``z_m`` by ``scale``:
  - ``rank`` (default): the Gaussian rank transform, ``z_m = Phi^-1((rank_m + 1/2) / n)``.
    Only the order of the scores counts, so one outlier module (SmolLM2's first MLP scores
    tens of times the median) or a folded score below zero (an interaction larger than the
    module's own effect) cannot squeeze every other module into the same ratio;
  - ``log``: ``standardise(log max(s_m, 1e-12 * max s))``, keeping the magnitudes. On
    SmolLM2-135M (entropy with interactions, ratio 0.3) four negative folded scores, floored
    at ``1e-12 * max``, dominated the std: those MLPs went whole, every other module got a
    ratio of 0.19-0.28, and WikiText2 PPL was 350 against 133 with ``rank``.
- The ratio of module ``m`` is ``r_m = sigmoid((theta - z_m) / temperature)``: monotone (a
  lower score means a higher ratio), and one temperature sets how unequal the ratios are
  (towards 0: whole modules are dropped in score order; large: every module gets the same
  ratio).
- With ``whole_modules``, a module whose ratio reaches ``threshold`` is removed whole: it
  costs nothing afterwards, its fixed cost (norm, kernel launches; latency target) included.
- ``theta`` is found by bisection so that the removed cost meets the budget. The shared walk
  then removes each partly pruned module's units in score order, every module in step with
  its ratio, and stops at the exact budget (within half a unit), without letting a partly
  pruned module reach the threshold.

A block's ratio (the paper's Algorithm 1) is the cost-weighted sum over its two modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

from prunelab.errors import PrunelabError
from prunelab.registry import SCHEDULES
from prunelab.schedules.base import Group, Schedule, ScheduleParams, fill_priorities
from prunelab.schedules.pools import Pool

#: Priority of the units of wholly removed modules: before every fill priority (>= 0).
WHOLE = -1.0
BISECTION_STEPS = 200


@dataclass
class DynamicParams(ScheduleParams):
    """Temperature of the score-to-ratio mapping and the whole-module rule."""

    temperature: float = 1.0  # spread of the ratios, in units of z (standard scores)
    threshold: float = 0.9  # a module whose ratio reaches this is removed whole
    whole_modules: bool = True  # apply the threshold rule (false: modules only thin out)
    scale: Literal["rank", "log"] = "rank"  # how scores become standard scores

    def check(self) -> list[str]:
        problems = super().check()
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.threshold <= 1.0:
            problems.append(f"threshold must be in (0, 1], got {self.threshold}")
        if self.attention_ratio is not None:
            problems.append("attention_ratio does not apply to schedule=dynamic: the module "
                            "split follows the module scores")
        if self.whole_modules and (self.min_heads or self.min_channels):
            problems.append("min_heads / min_channels contradict whole-module removal; set "
                            "whole_modules=false to keep a floor in every block")
        return problems


@dataclass
class ModuleDecision:
    """What the mapping gave one sub-layer."""

    layer: int
    module: str
    score: float
    z: float
    ratio: float
    whole: bool


def sigmoid(x: float) -> float:
    """Numerically safe logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def rank_standardised(scores: list[float]) -> list[float]:
    """Gaussian rank transform: the normal quantile of each score's mid-rank (ties share)."""
    n = len(scores)
    order = sorted(range(n), key=lambda i: scores[i])
    ranks = [0.0] * n
    start = 0
    while start < n:
        end = start
        while end + 1 < n and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2
        start = end + 1
    normal = NormalDist()
    return [normal.inv_cdf((r + 0.5) / n) for r in ranks]


def log_standardised(scores: list[float]) -> list[float]:
    """``(log s - mean) / std`` with non-positive scores floored at ``1e-12 * max``."""
    top = max(scores)
    if not top > 0:
        raise PrunelabError(f"Every module score is <= 0 ({scores[:4]}...): the model shows no "
                            "effect of removing any module; check the calibration data.")
    logs = [math.log(max(s, 1e-12 * top)) for s in scores]
    mean = sum(logs) / len(logs)
    std = math.sqrt(sum((v - mean) ** 2 for v in logs) / len(logs))
    return [(v - mean) / (std if std > 0 else 1.0) for v in logs]


SCALES = {"rank": rank_standardised, "log": log_standardised}


@SCHEDULES.register("dynamic")
class Dynamic(Schedule):
    """Per-module ratios from module scores, met exactly by bisection on one shift."""

    Params = DynamicParams

    def __init__(self, params: DynamicParams):
        super().__init__(params)
        self.decisions: list[ModuleDecision] = []
        self._floors: dict[tuple[int, str], int] = {}

    def pool_targets(self, pools: list[Pool], num_layers: int) -> list[float]:
        raise PrunelabError("schedule=dynamic sizes modules from module scores of the whole "
                            "model, so it cannot allocate block by block as sequential "
                            "methods (wanda_sp) need. Use schedule=uniform.")

    def report(self) -> dict[tuple[int, str], dict]:
        return {(d.layer, d.module): {"score": d.score, "z": d.z, "ratio": d.ratio,
                                      "whole": d.whole} for d in self.decisions}

    def floor(self, pool: Pool) -> int:
        return self._floors.get((pool.layer, pool.module), super().floor(pool))

    def _groups(self, pools: list[Pool], protected: list[bool],
                num_layers: int) -> dict[str, Group]:
        missing = [p for p in pools if p.module_score is None]
        if missing:
            raise PrunelabError("schedule=dynamic sizes sub-layers by their importance as a "
                                "whole, which this method does not measure (no module scores). "
                                "Use method=interaction, or another schedule.")
        p = self.params
        budget = p.ratio * sum(pool.total_cost for pool in pools)
        members = [i for i, closed in enumerate(protected) if not closed]
        priorities = [[math.inf] * pool.size for pool in pools]
        self.decisions, self._floors = [], {}
        if budget <= 0 or not members:
            self._check_open(budget, 0.0)
            return {"all": (list(range(len(pools))), budget, priorities)}
        open_pools = [pools[i] for i in members]
        most = sum(pool.total_cost if p.whole_modules else pool.total_cost - pool.fixed
                   for pool in open_pools)
        if budget > most:
            raise PrunelabError(f"The budget of {budget:,.6g} cannot be met: the open modules "
                                f"hold {most:,.6g} under {p!r}. Lower the ratio or the "
                                "protected blocks.")
        z = SCALES[p.scale]([float(pool.module_score) for pool in open_pools])
        theta = self._solve(open_pools, z, budget)
        for i, pool, z_m in zip(members, open_pools, z):
            ratio = sigmoid((theta - z_m) / p.temperature)
            whole = p.whole_modules and ratio >= p.threshold
            self.decisions.append(ModuleDecision(pool.layer, pool.module,
                                                 float(pool.module_score), z_m, ratio, whole))
            if whole:
                priorities[i] = [WHOLE] * pool.size
                self._floors[(pool.layer, pool.module)] = 0
            else:
                priorities[i] = fill_priorities(pool, ratio * (pool.total_cost - pool.fixed))
                if p.whole_modules:  # a partly pruned module stays below the threshold
                    self._floors[(pool.layer, pool.module)] = \
                        pool.size - (math.ceil(p.threshold * pool.size) - 1)
        return {"all": (list(range(len(pools))), budget, priorities)}

    def _removed_cost(self, pools: list[Pool], z: list[float], theta: float
                      ) -> tuple[float, float]:
        """Removed cost at ``theta`` (whole modules at full cost) and the whole modules' part."""
        p = self.params
        total = whole = 0.0
        for pool, z_m in zip(pools, z):
            ratio = sigmoid((theta - z_m) / p.temperature)
            if p.whole_modules and ratio >= p.threshold:
                total += pool.total_cost
                whole += pool.total_cost
            else:
                total += ratio * (pool.total_cost - pool.fixed)
        return total, whole

    def _solve(self, pools: list[Pool], z: list[float], budget: float) -> float:
        """The shift whose removed cost meets ``budget``.

        The cost is non-decreasing in ``theta`` and jumps where a module becomes whole. Of
        the two ends of a jump, the upper one is taken when its whole modules fit the budget
        (the walk then removes a little less from the partly pruned modules), else the lower.
        """
        span = 60 * self.params.temperature
        low, high = min(z) - span, max(z) + span
        for _ in range(BISECTION_STEPS):
            mid = (low + high) / 2
            if self._removed_cost(pools, z, mid)[0] < budget:
                low = mid
            else:
                high = mid
        return high if self._removed_cost(pools, z, high)[1] <= budget else low

