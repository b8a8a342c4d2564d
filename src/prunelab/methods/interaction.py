"""Interaction-guided multi-module pruning (Yang, Lin, Li, Chang, ICML 2025).

"Let LLM Tell What to Prune and How Much to Prune": the paper states that heads, channels and
whole sub-layers should be pruned together with dynamic ratios, that the model's own behaviour
and the interactions between its modules tell what to prune and how much, that every block
gets its ratio from a target ratio (its Algorithm 1), and that bias compensation is used. Its
pruning code is not public; prunelab's formulation (METHODS.md) is:

- What matters, told by the model: each sub-layer is replaced by its mean output and the change
  of the model is measured (``estimator``: ``entropy`` of the final hidden states, the default
  and the paper's family; ``kl`` of the output distribution; ``cosine`` across the module);
  see calibration/ablation.py.
- Interactions (``interactions``): adjacent modules are also removed in pairs, and half of each
  pair's interaction ``s_{m,m'} - s_m - s_{m'}`` is added to each module's score. Off by
  default: on SmolLM2-135M folding made WikiText2 PPL worse with every estimator
  (``experiment=interaction_ablation`` at ratio 0.5: entropy 378 -> 925, kl 394 -> 439,
  cosine 388 -> 402), because none of the estimators is additive over removals; the pair
  removals also double the scoring cost.
- How much: ``schedule=dynamic`` maps the module scores to ratios with one temperature, solved
  by bisection for the budget in params, MACs or latency; modules at the threshold go whole.
- What, inside a partly pruned module: FLAP's fluctuation ranking (WIFV by default), and
  FLAP's bias compensation.

The pruning stage caches module effects by (model, calibration, estimator), so sweeps over
budgets, temperatures and thresholds score once; the FLAP statistics are shared with
``method=flap`` on the same calibration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prunelab.calibration.ablation import ModuleEffects
from prunelab.calibration.runner import LayerStats
from prunelab.methods import EffectsRequest, PruningMethod, UnitScores, register
from prunelab.methods.flap import FLAP, FLAPParams
from prunelab.models.adapters import LayerAdapter


@dataclass
class InteractionParams:
    """Interaction-guided pruning's options (the allocation's are in schedule=dynamic)."""

    estimator: Literal["entropy", "kl", "cosine"] = "entropy"
    interactions: bool = False  # fold adjacent-pair interactions into the module scores
    metric: Literal["IFV", "WIFV", "WIFN"] = "WIFV"  # FLAP's ranking inside a module
    bias_compensation: bool = True


@register("interaction")
class Interaction(PruningMethod):
    """Module scores from removal effects; FLAP ranking inside modules."""

    Params = InteractionParams
    statistics = FLAP.statistics
    needs = frozenset({"module_effects"})

    def __init__(self, params: InteractionParams):
        super().__init__(params)
        self._flap = FLAP(FLAPParams(metric=params.metric,
                                     bias_compensation=params.bias_compensation))

    def score_block(self, index: int, layer: LayerAdapter, stats: LayerStats,
                    comparable: bool) -> UnitScores:
        return self._flap.score_block(index, layer, stats, comparable)

    def effects_request(self) -> EffectsRequest:
        return EffectsRequest(self.params.estimator, pairs=self.params.interactions)

    def module_scores(self, effects: ModuleEffects) -> list[tuple[float, float]]:
        scores = effects.folded() if self.params.interactions else effects.single
        return [(float(a), float(m)) for a, m in scores]
