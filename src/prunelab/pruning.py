"""The pruning stage: calibrate -> (module effects) -> score -> allocate -> cut -> report.

Written once for every method. A method (prunelab/methods/) declares what it removes and what
it needs, and only scores; this stage owns the order of work and everything with a side
effect: the calibration data and its cache, the cost model of the budget, the schedule's
allocation, the surgery and the report that goes into results.json.

- Calibration statistics are cached by (model, calibration config, statistic kinds), module
  effects by (model, calibration config, estimator, pairs), so a sweep calibrates once.
- A ``sequential`` method is calibrated, scored, allocated and masked block by block, so each
  block sees the outputs of the pruned blocks before it.
- ``gradients`` adds the loss gradient of every projection weight to the statistics.
- ``removes = "blocks"`` methods lose whole decoder blocks, lowest score first, to the
  schedule's ratio (nearest without exceeding) or to the count they ask for.
- A streamed model (``memory.stream``) is calibrated layer-wise, scored and cut one block in
  memory at a time; its pruned model is written block by block to ``<job>/model`` and read
  back from there (whole, or streamed for layer-wise evaluation).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from prunelab.calibration.ablation import ModuleEffects, measure_module_effects
from prunelab.calibration.cache import StatisticsCache
from prunelab.calibration.runner import LayerStats, run_layerwise, run_streaming
from prunelab.config.schema import ModelConfig, RunConfig
from prunelab.data.calibration import sample_calibration, with_bos
from prunelab.data.corpora import load_corpus
from prunelab.errors import NonFiniteError, PrunelabError
from prunelab.meter import PhaseMeter
from prunelab.methods import PruningMethod, UnitScores
from prunelab.models.adapters import LayerAdapter, adapter_for
from prunelab.models.layerwise import Residency
from prunelab.models.loading import LoadedModel, load_model, load_streamed
from prunelab.models.plan import SOURCE_FIELD, LayerPlan, PruningPlan
from prunelab.models.streamed_surgery import write_pruned_streamed
from prunelab.models.streaming import WeightStore
from prunelab.models.surgery import mask_block, prune_model
from prunelab.registry import SCHEDULES
from prunelab.schedules import Pool, Schedule, build_pools
from prunelab.schedules.base import fill_priorities, select
from prunelab.schedules.costs import CostModel, LatencyCost
from prunelab.schedules.pools import ATTENTION, MLP
from prunelab.schedules.targets import (
    achieved_fractions,
    cost_model_for,
    prunable_ratio,
    reported_currencies,
    shape_currencies,
    whole_cost,
    zero_scores,
)
from prunelab.schedules.whole_blocks import select_blocks

log = logging.getLogger(__name__)
Removed = list[dict[str, set[int]]]


@dataclass
class PruningOutcome:
    """What the stage reports besides the model it changed (timings, per-unit details)."""

    ratio_asked: float = 0.0
    plan: PruningPlan | None = None  # what was kept; None for dense
    timings_s: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def prune(method: PruningMethod, loaded: LoadedModel, job: RunConfig) -> PruningOutcome:
    """Prune ``loaded.model`` as ``method`` scores it under ``job``'s schedule (in place)."""
    if not method.prunes():
        return PruningOutcome()
    return _Stage(method, loaded, job).run()


def job_residency(weights: WeightStore | None, job: RunConfig) -> Residency:
    """Where a job's layer-wise passes keep blocks and buffers, from its ``memory`` settings.

    The buffer budget is in GB (None: never spill); spilled files go to ``memory.spill_dir``,
    else to the job folder.
    """
    budget_gb = job.memory.buffer_budget_gb
    return Residency(weights, None if budget_gb is None else int(budget_gb * 1e9),
                     job.memory.spill_dir or job.paths.output_dir)


class _Stage:
    """One pruning run; the steps share the job, the meter and what calibration found."""

    def __init__(self, method: PruningMethod, loaded: LoadedModel, job: RunConfig):
        self.method = method
        self.loaded = loaded
        self.job = job
        #: the schedule's parameters with the ratio of the prunable cost, and the schedule
        #: (made in run(), once the budget's currency is known)
        self.params = job.schedule.params
        self.schedule: Schedule | None = None
        self.meter = PhaseMeter(loaded.device)
        self.info: dict[str, Any] = {"used": bool(method.statistics)}
        self.residency = job_residency(loaded.weights, job)

    def run(self) -> PruningOutcome:
        method, loaded, meter = self.method, self.loaded, self.meter
        layers = loaded.adapter.layers
        params = self.job.schedule.params
        _check_protection(params, len(layers))
        streamed = loaded.weights is not None
        if streamed:
            _check_streamable(method, params)
        cache_dir, speed = self.job.paths.cache_dir, self.job.benchmark.speed
        with meter.phase("profiling"):  # latency profiles: measured on first use, then cached
            cost_model = cost_model_for(params, loaded, speed, cache_dir)
            currencies, unavailable = reported_currencies(params, loaded, speed, cache_dir,
                                                          cost_model, profile=not streamed)
        by_shape = shape_currencies(currencies)
        totals_before = {name: whole_cost(layers, model)
                         for name, model in {**currencies, **by_shape}.items()}
        # latency ratios are of the whole model's time; the schedules divide prunable costs
        self.params = replace(params, ratio=prunable_ratio(params.ratio, layers, cost_model))
        self.schedule = SCHEDULES.get(self.job.schedule.name)(self.params)
        layers_before = [layer.geometry for layer in layers]
        with meter.phase("calibration"):
            if "sequential" in method.needs:
                stats, removed, budget, cost = self._calibrate_sequentially(cost_model)
            else:
                stats = self._calibrate()
        if "gradients" in method.needs:
            with meter.phase("gradients"):
                for block_stats, gradients in zip(stats, self._gradients()):
                    block_stats["gradients"] = gradients
        _check_finite(stats)
        modules = None
        if "module_effects" in method.needs:
            with meter.phase("module_scoring"):
                effects = self._module_effects()
                _check_finite_effects(effects)
                modules = method.module_scores(effects)
        with meter.phase("scoring"):
            if method.removes == "blocks":
                removed, budget, cost = self._allocate_blocks(layers, stats, cost_model)
            elif "sequential" not in method.needs:
                removed, budget, cost = self._allocate_units(layers, stats, cost_model,
                                                             modules)
            plan = PruningPlan.from_removed(loaded.adapter, removed)
        with meter.phase("surgery"):
            means = _compensation_means(stats) if method.bias_compensation else None
            if streamed:
                self._cut_streamed(plan, means)
            else:
                pruned = prune_model(loaded.model, loaded.adapter, plan, means,
                                     release_source=True)
                loaded.model = pruned
                loaded.adapter = adapter_for(pruned)
        total = totals_before[cost_model.name]
        return PruningOutcome(
            ratio_asked=budget / total,
            timings_s=meter.wall_time_s,
            peak_memory_bytes=meter.peak_memory_bytes,
            plan=plan,
            details={
                "schedule": {"name": self.job.schedule.name, **asdict(params)},
                "target": {"name": cost_model.name, "unit": cost_model.unit,
                           "budget": budget, "removed": cost, "total": total,
                           "fixed": cost_model.model_fixed,
                           "prunable_ratio": self.params.ratio},
                "latency_profiles": {name: model.describe() for name, model in
                                     currencies.items() if isinstance(model, LatencyCost)},
                "achieved": achieved_fractions(totals_before, loaded.adapter.layers,
                                               currencies),
                "achieved_by_shape": achieved_fractions(totals_before, loaded.adapter.layers,
                                                        by_shape),
                "achieved_unavailable": unavailable,
                "bias_compensation": method.bias_compensation,
                "memory_kind": meter.memory_kind,
                "calibration": self.info,
                "kept_heads": [layer.heads for layer in plan.layers],
                "blocks": _block_report(layers_before, plan, modules, self.schedule.report()),
            },
        )

    def _cut_streamed(self, plan: PruningPlan, means) -> None:
        """Write the pruned model block by block, then read it back as the job's model."""
        loaded, job = self.loaded, self.job
        folder = pruned_folder(job)
        write_pruned_streamed(loaded.weights, loaded.adapter, loaded.tokenizer, plan, means,
                              folder, record={SOURCE_FIELD: loaded.source})
        log.info("Pruned model written block by block to %s", folder)
        local = ModelConfig(name=f"{job.model.name}-pruned", source="local", path=str(folder),
                            device=job.model.device, dtype=job.model.dtype)
        layerwise = job.memory.evaluation == "layerwise"
        pruned = (load_streamed if layerwise else load_model)(local, job.paths.cache_dir)
        loaded.model, loaded.adapter, loaded.weights = (pruned.model, pruned.adapter,
                                                        pruned.weights)

    # -- calibration -------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        """What cached calibration results depend on: the model and the calibration set."""
        job, loaded = self.job, self.loaded
        return {"model": loaded.fingerprint,
                "prunable_params": loaded.adapter.prunable_parameter_count(),
                "calibration": asdict(job.calibration),
                **({"bos": True} if job.model.bos else {})}

    def _samples(self) -> torch.Tensor:
        calib = self.job.calibration
        corpus = load_corpus(calib.dataset, calib.split, self.job.paths.data_dir,
                             documents=calib.documents, path=calib.path)
        samples = sample_calibration(corpus, self.loaded.tokenizer, calib.nsamples,
                                     calib.seqlen, calib.seed, mode=calib.mode,
                                     joiner=calib.joiner)
        return with_bos(samples, self.loaded.tokenizer) if self.job.model.bos else samples

    def _calibrate(self) -> list[LayerStats]:
        kinds = list(self.method.statistics)
        adapter, device = self.loaded.adapter, self.loaded.device
        if not kinds:
            return [{} for _ in adapter.layers]
        calib = self.job.calibration
        cache = StatisticsCache(self.job.paths.cache_dir,
                                {**self._identity(), "statistics": sorted(kinds)})
        self.info.update({"cache_key": cache.key, "calibration": asdict(calib)})
        with cache.computing():
            stats = cache.load()
            self.info["cache_hit"] = stats is not None
            if stats is None:
                samples = self._samples()
                streaming = self.loaded.weights is None and (
                    calib.engine == "streaming"
                    or (calib.engine == "auto" and not calib.offload))
                self.info["engine"] = "streaming" if streaming else "layerwise"
                if streaming:
                    stats = run_streaming(adapter, samples, kinds, calib.batch_size, device)
                else:
                    stats = run_layerwise(adapter, samples, kinds, calib.batch_size, device,
                                          offload=calib.offload, residency=self.residency)
                cache.save(stats)
        return stats

    def _calibrate_sequentially(self, cost_model: CostModel
                                ) -> tuple[list[LayerStats], Removed, float, float]:
        """Score, allocate and mask block by block; later blocks see the masked outputs."""
        calib = self.job.calibration
        name = type(self.method).__name__
        if calib.engine == "streaming":
            raise PrunelabError(f"{name} is sequential: it calibrates block by block on pruned "
                                "outputs, so calibration.engine=streaming cannot apply. Use "
                                "engine=auto or layerwise.")
        adapter, schedule = self.loaded.adapter, self.schedule
        layers = adapter.layers
        targets = schedule.pool_targets(build_pools(layers, *zero_scores(layers), cost_model),
                                        len(layers))
        removed: Removed = []
        totals = {"target": 0.0, "removed": 0.0}
        target_iter = iter(targets)

        def on_layer(index: int, layer: LayerAdapter, stats: LayerStats) -> None:
            scores = checked_unit_scores(self.method, index, layer, stats, comparable=False)
            pools = build_pools([layer], [scores.heads], [scores.channels], cost_model,
                                head_groups=schedule.params.head_groups)
            pool_targets = [next(target_iter) for _ in pools]
            totals["target"] += sum(t * p.total_cost for t, p in zip(pool_targets, pools))
            priorities = [fill_priorities(p, t * p.total_cost)
                          for p, t in zip(pools, pool_targets)]
            chosen, cost = select(pools, priorities, totals["target"] - totals["removed"],
                                  [schedule.floor(p) for p in pools], repr(schedule.params))
            totals["removed"] += cost
            gone = {p.module: p.removed_indices(units) for p, units in zip(pools, chosen)}
            removed.append(gone)
            g = layer.geometry
            mask_block(layer, LayerPlan.from_removed(g.num_heads, g.intermediate_size, gone))

        self.info.update({"calibration": asdict(calib), "cache_hit": False, "sequential": True})
        stats = run_layerwise(adapter, self._samples(), list(self.method.statistics),
                              calib.batch_size, self.loaded.device, offload=calib.offload,
                              on_layer=on_layer, sequential=True, residency=self.residency)
        return stats, removed, totals["target"], totals["removed"]

    def _gradients(self) -> list[dict[str, torch.Tensor]]:
        """d(loss)/dW of every block's projections, on the unpruned model (not cached).

        The loss is the mean next-token cross-entropy of each calibration batch, averaged
        over batches. Only the projection weights take gradients (everything else is frozen
        for the pass and restored after); the results are float32 CPU tensors, so they cost
        the projections' size once more in host memory.
        """
        adapter, device = self.loaded.adapter, self.loaded.device
        model = adapter.model
        weights = [{name: linear.weight for name, linear in layer.projections().items()}
                   for layer in adapter.layers]
        parameters = list(model.parameters())
        trainable = [p.requires_grad for p in parameters]
        batches = self._samples().split(self.job.calibration.batch_size)
        try:
            for p in parameters:
                p.requires_grad_(False)
                p.grad = None
            for block in weights:
                for weight in block.values():
                    weight.requires_grad_(True)
            with torch.enable_grad():
                for batch in tqdm(batches, desc="gradients", unit="batch"):
                    ids = batch.to(device)
                    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                    (loss / len(batches)).backward()
            return [{name: weight.grad.detach().float().cpu() for name, weight in block.items()}
                    for block in weights]
        finally:
            for p, flag in zip(parameters, trainable):
                p.requires_grad_(flag)
                p.grad = None

    def _module_effects(self) -> ModuleEffects:
        """Module (and, when asked, pair) removal effects, from the cache when present.

        An entry with pairs also serves a request without them, so an ablation scores once.
        """
        request = self.method.effects_request()

        def cache_for(pairs: bool) -> StatisticsCache:
            return StatisticsCache(self.job.paths.cache_dir, {
                **self._identity(), "module_effects": request.estimator, "pairs": pairs})

        def cached() -> ModuleEffects | None:
            for pairs in [True] if request.pairs else [True, False]:
                entry = cache_for(pairs).load()
                if entry is not None:
                    fields = entry[0]["module_effects"]
                    return ModuleEffects(fields["single"], fields.get("pair"))
            return None

        target = cache_for(request.pairs)
        with target.computing():
            effects = cached()
            self.info["module_effects_cache_hit"] = effects is not None
            if effects is None:
                effects = measure_module_effects(
                    self.loaded.adapter, self._samples(), request.estimator, request.pairs,
                    self.job.calibration.batch_size, self.loaded.device, self.residency)
                fields = {"single": effects.single}
                if effects.pair is not None:
                    fields["pair"] = effects.pair
                target.save([{"module_effects": fields}])
        self.info["module_effects"] = {
            "estimator": request.estimator, "single": effects.single.tolist(),
            "pair": None if effects.pair is None else effects.pair.tolist()}
        return effects

    # -- scoring and allocation ---------------------------------------------------------

    def _allocate_units(self, layers: list[LayerAdapter], stats: list[LayerStats],
                        cost_model: CostModel, modules: list[tuple[float, float]] | None
                        ) -> tuple[Removed, float, float]:
        comparable = self.schedule.comparable_scores
        scores = []
        for i, layer in enumerate(layers):
            with self.residency.resident(layer.layer, device=self.loaded.device):
                scores.append(checked_unit_scores(self.method, i, layer, stats[i], comparable))
        pools = build_pools(layers, [s.heads for s in scores], [s.channels for s in scores],
                            cost_model, modules, self.schedule.params.head_groups)
        allocation = self.schedule.allocate(pools, len(layers))
        removed = _removed_per_layer(pools, allocation.removed, len(layers))
        return (removed, sum(allocation.budgets.values()),
                sum(allocation.removed_costs.values()))

    def _allocate_blocks(self, layers: list[LayerAdapter], stats: list[LayerStats],
                         cost_model: CostModel) -> tuple[Removed, float, float]:
        scores = self.method.score_blocks(layers, stats)
        if len(scores.scores) != len(layers):
            raise RuntimeError(f"{type(self.method).__name__} scored {len(scores.scores)} "
                               f"blocks of {len(layers)}")
        pools = build_pools(layers, *zero_scores(layers), cost_model)
        costs = [sum(p.total_cost for p in pools if p.layer == i) for i in range(len(layers))]
        chosen, budget = select_blocks(scores.scores, costs, self.params,
                                       scores.count)
        self.info["block_scores"] = [float(s) for s in scores.scores]
        self.info["removed_blocks"] = chosen
        removed: Removed = [{} for _ in layers]
        for index in chosen:
            g = layers[index].geometry
            removed[index] = {ATTENTION: set(range(g.num_heads)),
                              MLP: set(range(g.intermediate_size))}
        return removed, budget, sum(costs[i] for i in chosen)


def pruned_folder(job: RunConfig) -> Path:
    """Where a job saves its pruned model (a streamed job always does: it is read back)."""
    return Path(job.paths.output_dir) / "model"


def _check_streamable(method: PruningMethod, params: Any) -> None:
    """Refuse, before any work, what a streamed model cannot do block by block."""
    name = type(method).__name__
    if "gradients" in method.needs:
        raise PrunelabError(f"{name} needs loss gradients (a backward pass through the whole "
                            "model), which memory.stream=true cannot provide one block at a "
                            "time. Use memory=resident, or a layer-wise method (flap, "
                            "wanda_sp, mag_sp, random, shortgpt, bip, interaction).")
    if str(params.target).startswith("latency"):
        raise PrunelabError(f"schedule.target={params.target} profiles the whole model's "
                            "latency in memory; with memory.stream=true use target=params or "
                            "macs.")


def _check_protection(params: Any, num_layers: int) -> None:
    """Refuse, before any calibration, protected blocks that leave nothing to prune."""
    protected = params.protect_first + params.protect_last
    if params.ratio > 0 and protected >= num_layers:
        raise PrunelabError(
            f"schedule.protect_first={params.protect_first} + protect_last="
            f"{params.protect_last} protect {protected} blocks, but the model has "
            f"{num_layers}: nothing can be pruned. Lower them (e.g. schedule.protect_first=1 "
            "schedule.protect_last=1).")


def checked_unit_scores(method: PruningMethod, index: int, layer: LayerAdapter,
                        stats: LayerStats, comparable: bool) -> UnitScores:
    """``method``'s scores of block ``index``, refused when any is NaN or Inf."""
    scores = method.score_block(index, layer, stats, comparable)
    for name, tensor in (("head", scores.heads), ("channel", scores.channels)):
        if not torch.isfinite(tensor).all():
            raise PrunelabError(
                f"{type(method).__name__}: {name} scores of block {index} hold NaN or Inf. "
                "Check the calibration statistics (float16 overflow?) and the weights.")
    return scores


_OVERFLOW_HINT = ("so no score computed from it means anything. This usually is an overflow: "
                  "use model.dtype=float32 (or bfloat16), or check the calibration data.")


def _check_finite(stats: list[LayerStats]) -> None:
    """Refuse NaN or Inf in what the scores are computed from, naming block and statistic."""
    for index, layer in enumerate(stats):
        for kind, fields in layer.items():
            for name, tensor in fields.items():
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise NonFiniteError(
                        f"Calibration statistic {kind}/{name} of block {index} holds "
                        f"{int((~torch.isfinite(tensor)).sum())} NaN/Inf value(s), "
                        + _OVERFLOW_HINT)


def _check_finite_effects(effects: ModuleEffects) -> None:
    """Refuse NaN or Inf module effects, naming the first such block and sub-layer."""
    bad = (~torch.isfinite(effects.single)).nonzero()
    if len(bad):
        block, module = bad[0].tolist()
        raise NonFiniteError(f"The module effect of block {block}'s "
                             f"{('attention', 'MLP')[module]} is NaN or Inf, " + _OVERFLOW_HINT)
    if effects.pair is not None and not torch.isfinite(effects.pair).all():
        pair = int((~torch.isfinite(effects.pair)).nonzero()[0, 0])
        raise NonFiniteError(f"The pair effect of modules {pair} and {pair + 1} (in execution "
                             "order) is NaN or Inf, " + _OVERFLOW_HINT)


def _compensation_means(stats: list[LayerStats]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    try:
        return [(s["attn_input"]["mean"], s["mlp_input"]["mean"]) for s in stats]
    except KeyError as err:
        raise RuntimeError("bias compensation needs the attn_input and mlp_input statistics; "
                           "add them to the method's statistics.") from err


def _removed_per_layer(pools: list[Pool], removed: list[list[int]],
                       num_layers: int) -> Removed:
    per_layer: Removed = [{} for _ in range(num_layers)]
    for pool, units in zip(pools, removed):
        per_layer[pool.layer][pool.module] = pool.removed_indices(units)
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
