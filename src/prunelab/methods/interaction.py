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

Module scores are cached by (model, calibration, estimator), so sweeps over budgets,
temperatures and thresholds score once; the FLAP statistics are shared with ``method=flap``
on the same calibration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from prunelab.calibration.ablation import ModuleEffects, measure_module_effects
from prunelab.calibration.cache import StatisticsCache
from prunelab.calibration.runner import LayerStats
from prunelab.methods.base import METHODS
from prunelab.methods.flap import FLAP, FLAPParams
from prunelab.methods.structured import LayerScores, StructuredMethod
from prunelab.models.adapters import LayerAdapter


@dataclass
class InteractionParams:
    """Interaction-guided pruning's options (the allocation's are in schedule=dynamic)."""

    estimator: Literal["entropy", "kl", "cosine"] = "entropy"
    interactions: bool = False  # fold adjacent-pair interactions into the module scores
    metric: Literal["IFV", "WIFV", "WIFN"] = "WIFV"  # FLAP's ranking inside a module
    bias_compensation: bool = True


@METHODS.register("interaction")
class Interaction(StructuredMethod):
    """Module scores from removal effects; FLAP ranking inside modules."""

    Params = InteractionParams
    statistics = FLAP.statistics
    scores_modules = True

    def __init__(self, params: InteractionParams):
        super().__init__(params)
        self._flap = FLAP(FLAPParams(metric=params.metric,
                                     bias_compensation=params.bias_compensation))

    def score(self, index: int, layer: LayerAdapter, stats: LayerStats,
              comparable: bool) -> LayerScores:
        return self._flap.score(index, layer, stats, comparable)

    def module_scores(self, run: Any, loaded: Any, info: dict) -> list[tuple[float, float]]:
        effects = self.module_effects(run, loaded, info)
        scores = effects.folded() if self.params.interactions else effects.single
        info["module_effects"] = {
            "estimator": self.params.estimator,
            "single": effects.single.tolist(),
            "pair": None if effects.pair is None else effects.pair.tolist(),
        }
        return [(float(a), float(m)) for a, m in scores]

    def module_effects(self, run: Any, loaded: Any, info: dict) -> ModuleEffects:
        """Module (and, when asked, pair) removal effects, from the cache when present.

        An entry with pairs also serves ``interactions=false``, so the ablation scores once.
        """
        def cache_for(pairs: bool) -> StatisticsCache:
            return StatisticsCache(run.paths.cache_dir, {
                **self.calibration_identity(run, loaded),
                "module_effects": self.params.estimator, "pairs": pairs})

        wanted = [True] if self.params.interactions else [True, False]
        for pairs in wanted:
            cached = cache_for(pairs).load()
            if cached is not None:
                info["module_effects_cache_hit"] = True
                fields = cached[0]["module_effects"]
                return ModuleEffects(fields["single"], fields.get("pair"))
        info["module_effects_cache_hit"] = False
        effects = measure_module_effects(
            loaded.adapter, self._samples(run, loaded), self.params.estimator,
            self.params.interactions, run.calibration.batch_size, loaded.device)
        fields = {"single": effects.single}
        if effects.pair is not None:
            fields["pair"] = effects.pair
        cache_for(self.params.interactions).save([{"module_effects": fields}])
        return effects
