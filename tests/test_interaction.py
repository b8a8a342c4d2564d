"""Interaction-guided pruning: scores equal direct re-runs, budgets hold, surgery is exact."""

from __future__ import annotations

import copy
import math
from statistics import NormalDist

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from prunelab import pipeline, pruning
from prunelab.calibration.ablation import ModuleEffects, measure_module_effects
from prunelab.config.schema import validate
from prunelab.errors import ConfigError, PrunelabError
from prunelab.eval import latency
from prunelab.methods.interaction import Interaction
from prunelab.models.adapters import adapter_for
from prunelab.models.loading import load_model
from prunelab.models.surgery import save_pruned
from prunelab.registry import SCHEDULES
from prunelab.schedules import build_pools
from prunelab.schedules.costs import MacCost, ParameterCost
from prunelab.schedules.dynamic import DynamicParams, log_standardised, rank_standardised
from tests.helpers.latency import synthetic_cost
from tests.helpers.plans import mask_model
from tests.helpers.tiny import tiny_model

CPU = torch.device("cpu")
SAMPLES = torch.randint(0, 257, (6, 16), generator=torch.Generator().manual_seed(0))


class DirectRuns:
    """The specification, run literally: whole-model forwards with modules set to their mean."""

    def __init__(self, model):
        self.model = model
        self.adapter = adapter_for(model)
        self.modules = [m for layer in self.adapter.layers for m in (layer.attention, layer.mlp)]
        outputs = self._run([], record=True)
        self.means = [torch.cat([o.reshape(-1, o.shape[-1]) for o in outs]).mean(0)
                      for outs in outputs["modules"]]
        self.full = outputs

    def _run(self, removed: list[int], record: bool = False) -> dict:
        handles, per_module = [], [[] for _ in self.modules]
        for k, module in enumerate(self.modules):
            if k in removed:
                mean = self.means[k]
                handles.append(module.register_forward_hook(
                    lambda _m, _i, o, mean=mean: (mean.expand_as(o[0]), *o[1:])
                    if isinstance(o, tuple) else mean.expand_as(o)))
            elif record:
                handles.append(module.register_forward_hook(
                    lambda _m, _i, o, k=k: per_module[k].append(
                        o[0] if isinstance(o, tuple) else o)))
        final = []
        handles.append(self.adapter.final_norm.register_forward_hook(
            lambda _m, _i, o: final.append(o)))
        with torch.no_grad():
            logits = self.model(SAMPLES).logits
        for handle in handles:
            handle.remove()
        return {"final": final[0].reshape(-1, final[0].shape[-1]),
                "logits": logits.reshape(-1, logits.shape[-1]), "modules": per_module}

    def entropy_effect(self, removed: list[int]) -> float:
        def entropy(z):
            return float(z.var(0).log().sum() / 2)

        return abs(entropy(self.full["final"]) - entropy(self._run(removed)["final"]))

    def kl_effect(self, removed: list[int]) -> float:
        log_p = F.log_softmax(self.full["logits"], -1)
        log_q = F.log_softmax(self._run(removed)["logits"], -1)
        return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


@pytest.fixture(scope="module", params=["mha", "gqa"])
def float64_model(request):
    return tiny_model(request.param).double()


@pytest.mark.parametrize("estimator", ["entropy", "kl"])
def test_scores_equal_direct_whole_model_runs(float64_model, estimator):
    effects = measure_module_effects(adapter_for(float64_model), SAMPLES, estimator, True, 4,
                                     CPU)
    direct = DirectRuns(float64_model)
    measure = direct.entropy_effect if estimator == "entropy" else direct.kl_effect
    singles = [measure([k]) for k in range(len(direct.modules))]
    assert effects.single.flatten().tolist() == pytest.approx(singles, rel=1e-5)
    interactions = [measure([k, k + 1]) - singles[k] - singles[k + 1]
                    for k in range(len(singles) - 1)]
    assert effects.interactions().tolist() == pytest.approx(interactions, rel=1e-5, abs=1e-9)


def test_cosine_is_measured_across_each_module(float64_model):
    adapter = adapter_for(float64_model)
    effects = measure_module_effects(adapter, SAMPLES, "cosine", True, 4, CPU)
    streams = []
    handles = [adapter.decoder_layers[0].register_forward_pre_hook(
        lambda _m, args, kwargs: streams.append(args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True)]
    for layer in adapter.layers:
        handles.append(layer.attention.register_forward_hook(
            lambda _m, _i, o: streams.append(streams[-1] + o[0])))
        handles.append(layer.layer.register_forward_hook(
            lambda _m, _i, o: streams.append(o[0] if isinstance(o, tuple) else o)))
    with torch.no_grad():
        float64_model(SAMPLES)
    for handle in handles:
        handle.remove()

    def one_minus_cos(a, b):
        return float((1 - F.cosine_similarity(a, b, dim=-1)).mean())

    assert effects.single.flatten().tolist() == pytest.approx(
        [one_minus_cos(streams[k], streams[k + 1]) for k in range(len(streams) - 1)], rel=1e-9)
    assert effects.pair.tolist() == pytest.approx(
        [one_minus_cos(streams[k], streams[k + 2]) for k in range(len(streams) - 2)], rel=1e-9)


def test_interactions_fold_half_into_each_neighbour():
    effects = ModuleEffects(torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
                            torch.tensor([2.0, 6.0, 9.0]))  # I = -1, 1, 2
    assert effects.interactions().tolist() == [-1.0, 1.0, 2.0]
    assert effects.folded().tolist() == [[0.5, 2.0], [4.5, 5.0]]


SYNTHETIC = synthetic_cost()


def scored_pools(layout: str, cost_model, layers: int = 6):
    adapter = adapter_for(tiny_model(layout, layers=layers))
    g = torch.Generator().manual_seed(1)
    modules = [tuple(torch.rand(2, generator=g).exp().tolist()) for _ in adapter.layers]
    return build_pools(adapter.layers,
                       [torch.randn(layer.geometry.num_heads, generator=g)
                        for layer in adapter.layers],
                       [torch.randn(layer.geometry.intermediate_size, generator=g)
                        for layer in adapter.layers], cost_model, modules)


def test_rank_scale_is_the_normal_quantile_of_the_mid_rank():
    z = rank_standardised([3.0, -1.0, 10.0, 3.0])  # ranks 1.5, 0, 3, 1.5 of 4
    quantile = NormalDist().inv_cdf
    assert z == [quantile(0.5), quantile(0.125), quantile(0.875), quantile(0.5)]
    assert z[1] == pytest.approx(-1.150349, abs=1e-6)


def test_rank_scale_ignores_outliers_that_squeeze_the_log_scale():
    typical = [5.0, 8.0, 13.0, 21.0]
    with_outliers = typical + [1e6, -4.0]
    assert rank_standardised(with_outliers)[:4] == rank_standardised(typical + [22.0, 4.0])[:4]
    squeezed = log_standardised(with_outliers)[:4]
    assert max(squeezed) - min(squeezed) < 0.2 * (max(log_standardised(typical))
                                                  - min(log_standardised(typical)))


def test_log_scale_standardises_the_log_scores():
    z = log_standardised([1.0, math.e, math.e ** 2])  # logs 0, 1, 2: mean 1, std sqrt(2/3)
    assert z == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5)], rel=1e-12)


@pytest.mark.parametrize("scale", ["rank", "log"])
@pytest.mark.parametrize("temperature", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("cost_model", [ParameterCost(), MacCost(64.5), SYNTHETIC],
                         ids=["params", "macs", "latency"])
@pytest.mark.parametrize("layout", ["mha", "gqa"])
def test_dynamic_budget_met_within_one_unit(layout, cost_model, temperature, scale):
    pools = scored_pools(layout, cost_model)
    schedule = SCHEDULES.get("dynamic")(DynamicParams(ratio=0.4, temperature=temperature,
                                                      scale=scale))
    allocation = schedule.allocate(pools, 6)
    cost = sum(sum(p.costs[:len(units)]) for p, units in zip(pools, allocation.removed))
    largest_unit = max(max(p.costs[:-1]) for p in pools)
    assert abs(cost - 0.4 * sum(p.total_cost for p in pools)) <= largest_unit
    decisions = schedule.report()
    for pool, units in zip(pools, allocation.removed):
        decision = decisions[(pool.layer, pool.module)]
        if decision["whole"]:
            assert len(units) == pool.size
        else:
            assert len(units) / pool.size < 0.9
    by_score = sorted(decisions.values(), key=lambda d: d["score"])
    assert all(a["ratio"] >= b["ratio"] for a, b in zip(by_score, by_score[1:]))


def test_low_temperature_removes_the_least_important_modules_whole():
    pools = scored_pools("mha", ParameterCost())
    schedule = SCHEDULES.get("dynamic")(DynamicParams(ratio=0.4, temperature=0.01))
    allocation = schedule.allocate(pools, 6)
    whole = [p for p, units in zip(pools, allocation.removed) if len(units) == p.size]
    assert whole
    kept_scores = [p.module_score for p, units in zip(pools, allocation.removed) if not units]
    assert max(p.module_score for p in whole) < min(kept_scores)


def test_whole_modules_off_never_applies_the_threshold():
    pools = scored_pools("gqa", ParameterCost())
    schedule = SCHEDULES.get("dynamic")(DynamicParams(ratio=0.5, temperature=0.05,
                                                      whole_modules=False))
    schedule.allocate(pools, 6)
    assert not any(d["whole"] for d in schedule.report().values())


def test_dynamic_schedule_needs_module_scores():
    adapter = adapter_for(tiny_model("mha"))
    pools = build_pools(adapter.layers, [torch.zeros(4)] * 3, [torch.zeros(40)] * 3)
    with pytest.raises(PrunelabError, match="method=interaction"):
        SCHEDULES.get("dynamic")(DynamicParams(ratio=0.3)).allocate(pools, 3)


def test_budget_beyond_the_open_modules_is_an_error():
    pools = scored_pools("mha", ParameterCost())
    schedule = SCHEDULES.get("dynamic")(DynamicParams(ratio=0.5, protect_first=5))
    with pytest.raises(PrunelabError, match="cannot be met"):
        schedule.allocate(pools, 6)


@pytest.mark.parametrize("override, message", [
    ("schedule.temperature=0", "temperature must be > 0"),
    ("schedule.threshold=1.5", r"threshold must be in \(0, 1\]"),
    ("schedule.threshold=0", r"threshold must be in \(0, 1\]"),
    ("schedule.scale=linear", "'linear' is not one of rank, log"),
    ("method.estimator=mutual", "'mutual' is not one of entropy, kl, cosine"),
])
def test_bad_settings_are_refused(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg("method=interaction", override))


def test_latency_budget_without_a_profile_is_an_error(make_cfg, monkeypatch, tmp_path):
    def flat(*_args, **_kwargs):
        widths = [(3, 18, 6, 3, 120), (3, 3, 3, 3, 120), (3, 9, 3, 3, 120), (3, 18, 6, 3, 60),
                  (0, 0, 0, 3, 120), (3, 18, 6, 0, 0), (0, 0, 0, 0, 0)]
        latency.fit_sublayers([(list(w), 1e-3 - 1e-6 * w[1]) for w in widths], "1x128 on cpu")

    monkeypatch.setattr(latency, "shape_profile", flat)
    cfg = make_cfg("model=tiny_llama", "method=interaction", "schedule.target=latency",
                   "calibration.nsamples=4", "calibration.seqlen=16", "benchmark=smoke",
                   "logger=none", f"paths.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(PrunelabError, match="profile"):
        pipeline.run(cfg)


@pytest.mark.parametrize("model", ["tiny_llama_gqa", "tiny_gemma3"])
def test_pruned_model_equals_masked_and_reloads_exactly(make_cfg, tmp_path, monkeypatch, model):
    run = validate(make_cfg(f"model={model}", "method=interaction", "schedule.ratio=0.5",
                            "schedule.temperature=0.3", "calibration.nsamples=8",
                            "calibration.seqlen=32", f"paths.cache_dir={tmp_path / 'cache'}"))
    loaded = load_model(run.model, run.paths.cache_dir)
    original = copy.deepcopy(loaded.model)
    seen = {}
    real = pruning.prune_model

    def recording(model, adapter, plan, means, **kwargs):
        seen.update(plan=plan, means=means)
        return real(model, adapter, plan, means, **kwargs)

    monkeypatch.setattr(pruning, "prune_model", recording)
    outcome = pruning.prune(Interaction(run.method.params), loaded, run)
    blocks = outcome.details["blocks"]
    assert any(b["attention_removed"] or b["mlp_removed"] for b in blocks)
    mask_model(adapter_for(original), seen["plan"], seen["means"])
    tokens = torch.randint(0, 257, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        pruned_logits = loaded.model(tokens).logits
        assert (pruned_logits - original(tokens).logits).abs().max() < 1e-4
    for block, record in zip(loaded.model.model.layers, blocks):
        assert (block.self_attn is None) == record["attention_removed"]
        assert (block.mlp is None) == record["mlp_removed"]
    save_pruned(loaded.model, loaded.tokenizer, tmp_path / "saved", outcome.plan)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, pruned_logits)


def test_module_scores_are_cached_across_budgets(make_cfg, tmp_path):
    common = ["model=tiny_llama", "method=interaction", "calibration.nsamples=8",
              "calibration.seqlen=16", "benchmark=smoke", "logger=none",
              "~benchmark.perplexity.ptb", f"paths.cache_dir={tmp_path / 'cache'}"]
    first = pipeline.run(make_cfg(*common, "schedule.ratio=0.2", "method.interactions=true",
                                  output_dir=tmp_path / "a")).to_dict()
    second = pipeline.run(make_cfg(*common, "schedule.ratio=0.4", "method.interactions=false",
                                   "schedule.target=macs", output_dir=tmp_path / "b")).to_dict()
    assert first["pruning"]["details"]["calibration"]["module_effects_cache_hit"] is False
    assert second["pruning"]["details"]["calibration"]["module_effects_cache_hit"] is True
    achieved = second["pruning"]["details"]["achieved"]
    assert {"params", "macs"} <= set(achieved) and math.isclose(achieved["macs"], 0.4,
                                                                 abs_tol=0.02)
    assert (tmp_path / "b" / "modules.png").is_file()
