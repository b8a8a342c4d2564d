"""The structured-pruning driver shared by every score-based method.

calibration tokens -> per-block statistics (cached) -> scores per head and channel (the
method) -> removed units under a budget (the schedule) -> physical removal with optional bias
compensation (surgery). A method file only declares the statistics it needs and how it scores
one block; sequential methods (Wanda-sp) also see their own pruning while calibrating.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from prunelab.calibration.cache import StatisticsCache
from prunelab.calibration.runner import LayerStats, run_layerwise, run_streaming
from prunelab.data.calibration import sample_calibration
from prunelab.data.corpora import load_corpus
from prunelab.errors import PrunelabError
from prunelab.methods.base import PruneOutcome, PruningMethod
from prunelab.models.adapters import LayerAdapter, adapter_for
from prunelab.models.plan import PruningPlan, channel_index
from prunelab.models.surgery import prune_model
from prunelab.schedules import SCHEDULES, Pool, Schedule, build_pools
from prunelab.schedules.base import select
from prunelab.schedules.costs import CostModel
from prunelab.schedules.pools import ATTENTION, MLP
from prunelab.schedules.targets import (
    achieved_fractions,
    cost_model_for,
    reported_currencies,
    total_cost,
    zero_scores,
)
from prunelab.schedules.uniform import fill_priorities
from prunelab.tracking.meter import PhaseMeter

log = logging.getLogger(__name__)


@dataclass
class LayerScores:
    """Importance of each query head and MLP channel of one block (higher = keep)."""

    heads: torch.Tensor
    channels: torch.Tensor


def standardize(x: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` over one block's module (FLAP's cross-layer normalisation)."""
    std = x.std()
    return (x - x.mean()) / (std if std > 0 else 1.0)


class StructuredMethod(PruningMethod):
    """Scores heads and channels block by block; allocation and surgery are shared."""

    #: Statistic kinds (calibration/statistics.py) gathered for every block.
    statistics: ClassVar[tuple[str, ...]] = ()
    #: Calibrate each block on the outputs of the already-pruned previous blocks.
    sequential: ClassVar[bool] = False
    #: The method also scores each sub-layer as a whole (:meth:`module_scores`).
    scores_modules: ClassVar[bool] = False

    @classmethod
    def uses_calibration(cls) -> bool:
        return bool(cls.statistics)

    @abstractmethod
    def score(self, index: int, layer: LayerAdapter, stats: LayerStats,
              comparable: bool) -> LayerScores:
        """Scores of block ``index``; ``comparable`` asks for scores comparable across blocks."""

    def module_scores(self, run: Any, loaded: Any, info: dict) -> list[tuple[float, float]]:
        """Importance of each block's attention and MLP as wholes (``scores_modules``)."""
        raise NotImplementedError(f"{type(self).__name__} does not score whole modules")

    @property
    def bias_compensation(self) -> bool:
        """Whether removed units' mean contribution is folded into a bias."""
        return bool(getattr(self.params, "bias_compensation", False))

    def prune(self, run: Any, loaded: Any) -> PruneOutcome:
        schedule: Schedule = SCHEDULES.get(run.schedule.name)(run.schedule.params)
        adapter = loaded.adapter
        layers = adapter.layers
        meter = PhaseMeter(loaded.device)
        params = run.schedule.params
        dtype = next(loaded.model.parameters()).dtype
        with meter.phase("profiling"):  # unit latencies: measured on first use, then cached
            cost_model = cost_model_for(params, layers, loaded.device, dtype,
                                        run.paths.cache_dir)
            currencies, unavailable = reported_currencies(params, layers, loaded.device, dtype,
                                                          run.paths.cache_dir, cost_model)
        for name, reason in unavailable.items():
            log.warning("No achieved %s fraction for this run: %s", name, reason)
        totals_before = {name: total_cost(layers, model) for name, model in currencies.items()}
        layers_before = [layer.geometry for layer in layers]
        calibration_info: dict[str, Any] = {"used": bool(self.statistics)}
        with meter.phase("calibration"):
            if self.sequential:
                stats, removed, budget, cost = self._calibrate_sequentially(
                    run, loaded, schedule, cost_model, calibration_info)
            else:
                stats = self._calibrate(run, loaded, calibration_info)
        modules = None
        if self.scores_modules:
            with meter.phase("module_scoring"):
                modules = self.module_scores(run, loaded, calibration_info)
        with meter.phase("scoring"):
            if not self.sequential:
                scores = [self._checked_score(i, layer, stats[i], schedule.comparable_scores)
                          for i, layer in enumerate(layers)]
                pools = build_pools(layers, [s.heads for s in scores],
                                    [s.channels for s in scores], cost_model, modules)
                allocation = schedule.allocate(pools, len(layers))
                removed = _removed_per_layer(pools, allocation.removed, len(layers))
                budget = sum(allocation.budgets.values())
                cost = sum(allocation.removed_costs.values())
            plan = PruningPlan.from_removed(adapter, removed)
        with meter.phase("surgery"):
            means = self._compensation_means(stats) if self.bias_compensation else None
            pruned = prune_model(loaded.model, adapter, plan, means, release_source=True)
            loaded.model = pruned
            loaded.adapter = adapter_for(pruned)
        return PruneOutcome(
            ratio_asked=budget / totals_before[cost_model.name],
            timings_s=meter.wall_time_s,
            peak_memory_bytes=meter.peak_memory_bytes,
            plan=plan,
            details={
                "schedule": {"name": run.schedule.name, **asdict(run.schedule.params)},
                "target": {"name": cost_model.name, "unit": cost_model.unit,
                           "budget": budget, "removed": cost,
                           "total": totals_before[cost_model.name]},
                "achieved": achieved_fractions(totals_before, loaded.adapter.layers,
                                               currencies),
                "achieved_unavailable": unavailable,
                "bias_compensation": self.bias_compensation,
                "memory_kind": meter.memory_kind,
                "calibration": calibration_info,
                "kept_heads": [layer.heads for layer in plan.layers],
                "blocks": _block_report(layers_before, plan, modules, schedule.report()),
            },
        )

    def _checked_score(self, index, layer, stats, comparable) -> LayerScores:
        scores = self.score(index, layer, stats, comparable)
        for name, tensor in (("head", scores.heads), ("channel", scores.channels)):
            if not torch.isfinite(tensor).all():
                raise PrunelabError(
                    f"{type(self).__name__}: {name} scores of block {index} hold NaN or Inf. "
                    "Check the calibration statistics (float16 overflow?) and the weights."
                )
        return scores

    @staticmethod
    def calibration_identity(run: Any, loaded: Any) -> dict[str, Any]:
        """What cached calibration results depend on: the model and the calibration set."""
        return {"model": loaded.source, "model_name": run.model.name, "dtype": run.model.dtype,
                "prunable_params": loaded.adapter.prunable_parameter_count(),
                "calibration": asdict(run.calibration)}

    def _samples(self, run: Any, loaded: Any) -> torch.Tensor:
        calib = run.calibration
        corpus = load_corpus(calib.dataset, calib.split, run.paths.data_dir,
                             documents=calib.documents, path=calib.path)
        return sample_calibration(corpus, loaded.tokenizer, calib.nsamples, calib.seqlen,
                                  calib.seed, mode=calib.mode, joiner=calib.joiner)

    def _calibrate(self, run: Any, loaded: Any, info: dict) -> list[LayerStats]:
        if not self.statistics:
            return [{} for _ in loaded.adapter.layers]
        cache = StatisticsCache(run.paths.cache_dir, {
            **self.calibration_identity(run, loaded), "statistics": sorted(self.statistics)})
        info.update({"cache_key": cache.key, "calibration": asdict(run.calibration)})
        stats = cache.load()
        info["cache_hit"] = stats is not None
        if stats is None:
            calib = run.calibration
            samples = self._samples(run, loaded)
            streaming = calib.engine == "streaming" or (calib.engine == "auto"
                                                         and not calib.offload)
            info["engine"] = "streaming" if streaming else "layerwise"
            if streaming:
                stats = run_streaming(loaded.adapter, samples, list(self.statistics),
                                      calib.batch_size, loaded.device)
            else:
                stats = run_layerwise(loaded.adapter, samples, list(self.statistics),
                                      calib.batch_size, loaded.device, offload=calib.offload)
            cache.save(stats)
        return stats

    def _calibrate_sequentially(self, run, loaded, schedule: Schedule, cost_model: CostModel,
                                info: dict):
        """Score, allocate and mask block by block; later blocks see the masked outputs."""
        if run.calibration.engine == "streaming":
            raise PrunelabError(f"{type(self).__name__} is sequential: it calibrates block by "
                                "block on pruned outputs, so calibration.engine=streaming "
                                "cannot apply. Use engine=auto or layerwise.")
        adapter = loaded.adapter
        layers = adapter.layers
        targets = schedule.pool_targets(build_pools(layers, *zero_scores(layers), cost_model),
                                        len(layers))
        removed: list[dict[str, set[int]]] = []
        totals = {"target": 0.0, "removed": 0.0}
        target_iter = iter(targets)

        def on_layer(index: int, layer: LayerAdapter, stats: LayerStats) -> None:
            scores = self._checked_score(index, layer, stats, comparable=False)
            pools = build_pools([layer], [scores.heads], [scores.channels], cost_model)
            pool_targets = [next(target_iter) for _ in pools]
            totals["target"] += sum(t * p.total_cost for t, p in zip(pool_targets, pools))
            chosen, cost = select(pools, [fill_priorities(p, t) for p, t in zip(pools,
                                                                                 pool_targets)],
                                  totals["target"] - totals["removed"],
                                  [schedule.floor(p) for p in pools], repr(schedule.params))
            totals["removed"] += cost
            gone = {p.module: set(units) for p, units in zip(pools, chosen)}
            removed.append(gone)
            _mask_block(layer, gone)

        info.update({"calibration": asdict(run.calibration), "cache_hit": False,
                     "sequential": True})
        stats = run_layerwise(adapter, self._samples(run, loaded), list(self.statistics),
                              run.calibration.batch_size, loaded.device,
                              offload=run.calibration.offload, on_layer=on_layer,
                              sequential=True)
        return stats, removed, totals["target"], totals["removed"]

    @staticmethod
    def _compensation_means(stats: list[LayerStats]):
        try:
            return [(s["attn_input"]["mean"], s["mlp_input"]["mean"]) for s in stats]
        except KeyError as err:
            raise PrunelabError("bias compensation needs the attn_input and mlp_input "
                                "statistics; add them to the method's statistics.") from err


def _removed_per_layer(pools: list[Pool], removed: list[list[int]],
                       num_layers: int) -> list[dict[str, set[int]]]:
    per_layer: list[dict[str, set[int]]] = [{} for _ in range(num_layers)]
    for pool, units in zip(pools, removed):
        per_layer[pool.layer][pool.module] = set(units)
    return per_layer


def _block_report(geometries: list, plan: PruningPlan,
                  modules: list[tuple[float, float]] | None,
                  decisions: dict[tuple[int, str], dict]) -> list[dict[str, Any]]:
    """Per block: heads and channels removed, whole sub-layers removed, module scores."""
    report = []
    for index, (g, keep) in enumerate(zip(geometries, plan.layers)):
        entry: dict[str, Any] = {
            "layer": index,
            "removed_heads": g.num_heads - len(keep.heads),
            "removed_channels": g.intermediate_size - len(keep.channels),
            "attention_removed": g.num_heads > 0 and not keep.heads,
            "mlp_removed": g.intermediate_size > 0 and not keep.channels,
        }
        if modules is not None:
            entry["attention_score"], entry["mlp_score"] = map(float, modules[index])
        for module in (ATTENTION, MLP):
            if (index, module) in decisions:
                entry[f"{module}_decision"] = decisions[(index, module)]
        report.append(entry)
    return report


def _mask_block(layer: LayerAdapter, gone: dict[str, set[int]]) -> None:
    """Zero the removed units' input columns (exactly what surgery will remove)."""
    g = layer.geometry
    keep_heads = [h for h in range(g.num_heads) if h not in gone.get("attention", ())]
    keep_channels = [c for c in range(g.intermediate_size) if c not in gone.get("mlp", ())]
    with torch.no_grad():
        mask = torch.ones(layer.o_proj.in_features, dtype=torch.bool)
        mask[channel_index(keep_heads, layer.head_dim)] = False
        layer.o_proj.weight[:, mask.to(layer.o_proj.weight.device)] = 0
        mask = torch.ones(layer.down_proj.in_features, dtype=torch.bool)
        mask[torch.tensor(keep_channels, dtype=torch.long)] = False
        layer.down_proj.weight[:, mask.to(layer.down_proj.weight.device)] = 0


__all__ = ["LayerScores", "StructuredMethod", "standardize"]
