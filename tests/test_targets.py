"""Budgets in parameters, MACs and latency: prices, fits, the whole-model latency currencies
(fixed parts included), and budgets met within one unit."""

from __future__ import annotations

import logging

import pytest
import torch

from prunelab import pipeline
from prunelab.config.schema import SpeedSpec, validate
from prunelab.errors import ConfigError, PrunelabError
from prunelab.eval import latency
from prunelab.eval.latency import LatencyShape, ShapeProfile, SubLayerFit
from prunelab.eval.speed import macs_per_token
from prunelab.models.adapters import adapter_for
from prunelab.models.loading import LoadedModel
from prunelab.registry import SCHEDULES
from prunelab.schedules import build_pools
from prunelab.schedules.base import ScheduleParams
from prunelab.schedules.costs import MacCost, ParameterCost
from prunelab.schedules.targets import (
    cost_model_for,
    latency_shapes,
    prunable_ratio,
    total_cost,
    whole_cost,
)
from tests.helpers.latency import ATTENTION, synthetic_cost, synthetic_profiles
from tests.helpers.tiny import tiny_model

LAYERS = 6
#: A speed part for the smoke suite: jobs that time speed record every latency fraction.
SPEED = ("+benchmark.speed.grid=[[1,16]]", "+benchmark.speed.decode_tokens=2",
         "+benchmark.speed.repeats=2", "+benchmark.speed.reference=dense")
SYNTHETIC = synthetic_cost()
COST_MODELS = {"params": ParameterCost(), "macs": MacCost(64.5), "latency": SYNTHETIC}


@pytest.mark.parametrize("target", sorted(COST_MODELS))
@pytest.mark.parametrize("name", ["uniform", "global"])
@pytest.mark.parametrize("layout", ["mha", "gqa"])
def test_budget_in_every_currency_met_within_one_unit(target, name, layout):
    layers = adapter_for(tiny_model(layout, layers=LAYERS)).layers
    g = torch.Generator().manual_seed(0)
    pools = build_pools(layers,
                        [torch.randn(layer.geometry.num_heads, generator=g) for layer in layers],
                        [torch.randn(layer.geometry.intermediate_size, generator=g)
                         for layer in layers], COST_MODELS[target])
    schedule = SCHEDULES.get(name)(ScheduleParams(ratio=0.4, target=target))
    allocation = schedule.allocate(pools, LAYERS)
    cost = sum(sum(p.costs[:len(units)]) for p, units in zip(pools, allocation.removed))
    total = sum(p.total_cost for p in pools)
    assert abs(cost - 0.4 * total) <= max(c for p in pools for c in p.costs)


def test_latency_pools_carry_fixed_costs_on_their_last_unit():
    layers = adapter_for(tiny_model("gqa")).layers  # 6 heads on 2 KV heads, 40 channels
    attention, mlp = build_pools(layers[:1], [torch.arange(6.0)], [torch.arange(40.0)],
                                 SYNTHETIC)
    assert attention.costs == pytest.approx([3e-6, 3e-6, 5e-6, 3e-6, 3e-6, 45e-6])
    assert mlp.costs[-1] == pytest.approx(1e-7 + 25e-6) and mlp.costs[0] == pytest.approx(1e-7)


def test_mac_prices_add_up_to_the_mac_count():
    adapter = adapter_for(tiny_model("gqa"))
    macs = macs_per_token(adapter, 64.5)
    assert total_cost(adapter.layers, MacCost(64.5)) == pytest.approx(
        macs["linear"] + macs["attention"])


def _synthetic_points(adapter, seconds) -> list[tuple[list[float], float]]:
    """The dense model and its variants, each timed as ``seconds(features)``."""
    plans = [latency.dense_plan(adapter)] + [
        latency.variant_plan(adapter, width)
        for width in latency.variant_widths(latency.widest(adapter))]
    features = [latency.plan_features(adapter, plan) for plan in plans]
    return [(f, seconds(*f)) for f in features]


def test_latency_fit_recovers_a_linear_profile():
    adapter = adapter_for(tiny_model("gqa", layers=3))

    def seconds(attention_blocks, heads, kv_heads, mlp_blocks, channels):
        return (1e-4 + 1e-5 * attention_blocks + 2e-6 * heads + 5e-7 * kv_heads
                + 2e-5 * mlp_blocks + 1e-8 * channels)

    fitted_attention, fitted_mlp = latency.fit_sublayers(_synthetic_points(adapter, seconds),
                                                         "test")
    assert fitted_attention.fixed == pytest.approx(1e-5)
    assert fitted_attention.per_unit == pytest.approx(2e-6)
    assert fitted_attention.per_group == pytest.approx(5e-7)
    assert (fitted_mlp.fixed, fitted_mlp.per_unit) == pytest.approx((2e-5, 1e-8))


def test_latency_profile_refused_when_time_does_not_grow():
    adapter = adapter_for(tiny_model("gqa", layers=3))
    flat = _synthetic_points(adapter, lambda nA, h, k, nM, c: 1e-5 - 1e-7 * h + 1e-6 * c)
    with pytest.raises(PrunelabError, match="latency profile is not possible at 1x8 on cpu"):
        latency.fit_sublayers(flat, "1x8 on cpu")


def test_variants_keep_the_same_width_in_every_block():
    """6 heads on 2 KV heads, 40 channels: fewer heads per group, fewer groups, fewer
    channels, then no attention, no MLP, neither; MHA varies heads and KV heads together."""
    adapter = adapter_for(tiny_model("gqa", layers=3))
    widths = latency.variant_widths(latency.widest(adapter))
    assert widths == [((2, 2), 40), ((3, 1), 40), ((6, 2), 10), ((6, 2), 20), (None, 40),
                      ((6, 2), None), (None, None)]
    plan = latency.variant_plan(adapter, ((2, 2), 20))
    assert all(layer.heads == [0, 3] and layer.channels == list(range(20))
               for layer in plan.layers)  # one query head of each KV group
    assert latency.plan_features(adapter, plan) == [3, 6, 6, 3, 60]
    assert latency.plan_features(adapter, latency.variant_plan(adapter, (None, None))) == [0] * 5
    mha = latency.widest(adapter_for(tiny_model("mha", layers=1)))
    assert [w for w, c in latency.variant_widths(mha)][:2] == [
        (1, 1), (mha.num_heads // 2, mha.num_heads // 2)]


@pytest.mark.parametrize("shape", [LatencyShape("prefill", 2, 8),
                                   LatencyShape("decode", 1, 16, 4)])
def test_model_and_its_variants_are_timed_at_the_shape(shape):
    model = tiny_model("gqa", layers=3)
    adapter = adapter_for(model)
    points, model_s = latency.measure_variants(model, adapter, torch.device("cpu"), shape,
                                               model.config.vocab_size)
    assert points[0] == ([3, 18, 6, 3, 120], model_s)
    assert [f for f, _ in points[1:]] == [
        latency.plan_features(adapter, latency.variant_plan(adapter, width))
        for width in latency.variant_widths(latency.widest(adapter))]
    assert all(t > 0 for _, t in points)
    head_s = latency.head_seconds(adapter, torch.device("cpu"), shape, model.config.vocab_size)
    assert model_s > head_s > 0


def _loaded(layout: str = "gqa", layers: int = 3) -> LoadedModel:
    model = tiny_model(layout, layers=layers)
    return LoadedModel(model=model, tokenizer=None, adapter=adapter_for(model),
                       device=torch.device("cpu"), fingerprint="tiny", source="tiny")


def test_latency_currency_equals_a_hand_computation(monkeypatch):
    """Two shapes of weights 1 and 3: each unit's price is its seconds over the model's
    seconds, mixed by weight; the fixed parts make up the rest of a whole of one."""
    fits = {"1x16": (SubLayerFit(2e-6, 1e-6, 10e-6), SubLayerFit(1e-7, 0.0, 5e-6), 3e-5, 1e-5),
            "4x16": (SubLayerFit(6e-6, 4e-6, 20e-6), SubLayerFit(3e-7, 0.0, 9e-6), 8e-5, 5e-5)}

    def block(attention, mlp):  # 6 heads on 2 KV heads, 40 channels
        return (attention.fixed + 6 * attention.per_unit + 2 * attention.per_group
                + mlp.fixed + 40 * mlp.per_unit)

    totals = {name: 3 * block(attention, mlp) + fixed  # 3 blocks
              for name, (attention, mlp, fixed, _) in fits.items()}

    def profile(model, adapter, device, shape, vocab_size, cache_dir):
        attention, mlp, _, head = fits[shape.name]
        return ShapeProfile(shape, attention, mlp, totals[shape.name], head)

    monkeypatch.setattr(latency, "shape_profile", profile)
    loaded = _loaded()
    params = ScheduleParams(target="latency", target_shapes=[[1, 16], [4, 16]],
                            target_weights=[1.0, 3.0])
    cost = cost_model_for(params, loaded, SpeedSpec(), "unused")
    g = loaded.adapter.layers[0].geometry
    assert len(loaded.adapter.layers) == 3
    assert (g.num_heads, g.num_kv_heads, g.intermediate_size) == (6, 2, 40)
    per_head = (1 * 2e-6 / totals["1x16"] + 3 * 6e-6 / totals["4x16"]) / 4
    assert cost.attention(loaded.adapter.layers[0]).per_unit == pytest.approx(per_head)
    fixed = (1 * 3e-5 / totals["1x16"] + 3 * 8e-5 / totals["4x16"]) / 4
    assert cost.model_fixed == pytest.approx(fixed)
    assert whole_cost(loaded.adapter.layers, cost) == pytest.approx(1.0)
    assert cost.describe()["4x16"]["head_s"] == 5e-5
    assert cost.describe()["4x16"]["overhead_s"] == pytest.approx(3e-5)
    # a ratio of the whole model is that much more of the prunable part
    assert prunable_ratio(0.3, loaded.adapter.layers, cost) == pytest.approx(0.3 / (1 - fixed))
    with pytest.raises(PrunelabError, match="sub-layers are only"):
        prunable_ratio(0.999, loaded.adapter.layers, cost)


def test_latency_shapes_default_to_the_benchmark():
    speed = SpeedSpec(grid=[[1, 512], [8, 128]], decode_tokens=64, decode_prompt=32)
    assert [s.name for s in latency_shapes(ScheduleParams(), speed, "latency")] == \
        ["1x512", "8x128"]
    assert [s.name for s in latency_shapes(ScheduleParams(target_shapes=[[2, 64]]), speed,
                                           "latency")] == ["2x64"]
    assert [s.name for s in latency_shapes(ScheduleParams(), SpeedSpec(), "latency")] == \
        ["1x128"]
    decode, = latency_shapes(ScheduleParams(), speed, "latency_decode")
    assert (decode.kind, decode.seqlen, decode.new_tokens, decode.context) == \
        ("decode", 32, 64, 64)
    decode, = latency_shapes(ScheduleParams(target_decode=[8, 4]), speed, "latency_decode")
    assert decode.name == "decode 8+4"


@pytest.mark.parametrize("target", ["latency", "latency_decode"])
def test_whole_model_latency_budget_met_within_one_unit(make_cfg, monkeypatch, target):
    monkeypatch.setattr(latency, "shape_profile", synthetic_profiles())
    results = pipeline.run(make_cfg("model=tiny_llama_gqa", "method=mag_sp", "benchmark=smoke",
                                    "logger=none", f"schedule.target={target}",
                                    "schedule.ratio=0.3")).to_dict()
    details = results["pruning"]["details"]
    fixed = details["target"]["fixed"]
    assert 0 < fixed < 1 and details["target"]["total"] == pytest.approx(1.0)
    assert details["target"]["prunable_ratio"] == pytest.approx(0.3 / (1 - fixed))
    # the dearest unit: a group's last head with its KV head and the attention's fixed part
    scale = 0.1 if target == "latency_decode" else 1.0  # synthetic_profiles' decode step
    largest_unit = scale * (ATTENTION.per_unit + ATTENTION.per_group + ATTENTION.fixed)
    ((name, shape),) = details["latency_profiles"][target].items()
    assert abs(details["achieved"][target] - 0.3) <= largest_unit / shape["model_s"]
    assert details["achieved_by_shape"][f"{target}/{name}"] == pytest.approx(
        details["achieved"][target])
    assert results["pruning"]["ratio_asked"] == pytest.approx(0.3)


def test_latency_shapes_beyond_the_context_are_refused(make_cfg):
    with pytest.raises(PrunelabError, match="beyond the model.s context length of 512"):
        pipeline.run(make_cfg("model=tiny_llama", "method=mag_sp", "benchmark=smoke",
                              "logger=none", "schedule.target=latency",
                              "schedule.target_shapes=[[1,1024]]"))


def test_latency_decode_needs_a_kv_cache_path():
    class NoCache(torch.nn.Module):
        def forward(self, input_ids, use_cache=False):
            return {"logits": torch.zeros(*input_ids.shape, 4)}

    with pytest.raises(PrunelabError, match="needs a model with a KV cache path"):
        latency.check_decode_path(NoCache(), torch.device("cpu"))


@pytest.mark.parametrize(("override", "message"), [
    ("schedule.target_shapes=[[1,0]]", "target_shapes entries are"),
    ("schedule.target_weights=[1.0]", "one weight >= 0 per target_shapes entry"),
    ("schedule.target_decode=[32]", "target_decode is \\[prompt, new tokens\\]"),
])
def test_malformed_latency_shapes_are_refused(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(override))


def test_unknown_target_lists_the_valid_ones(make_cfg):
    with pytest.raises(ConfigError,
                       match="'flops' is not one of params, macs, latency, latency_decode"):
        validate(make_cfg("schedule.target=flops"))


def test_job_records_achieved_fraction_in_every_currency(make_cfg, monkeypatch):
    monkeypatch.setattr(latency, "shape_profile", synthetic_profiles())
    results = pipeline.run(make_cfg("model=tiny_llama_gqa", "method=flap", "benchmark=smoke",
                                    "calibration.nsamples=8", "logger=none",
                                    "schedule.target=macs", "schedule.ratio=0.3",
                                    *SPEED)).to_dict()
    details = results["pruning"]["details"]
    assert details["target"]["name"] == "macs"
    assert set(details["achieved"]) == {"params", "macs", "latency", "latency_decode"}
    assert 0 < details["achieved"]["latency"] < 1 and not details["achieved_unavailable"]
    assert details["achieved"]["macs"] == pytest.approx(0.3, abs=0.05)
    assert results["pruning"]["ratio_asked"] == pytest.approx(0.3, abs=1e-9)

    results = pipeline.run(make_cfg("model=tiny_llama_gqa", "method=mag_sp", "benchmark=smoke",
                                    "logger=none", "schedule.target=latency",
                                    "schedule.ratio=0.3", "overwrite=true", *SPEED)).to_dict()
    details = results["pruning"]["details"]
    assert set(details["achieved"]) == {"params", "macs", "latency", "latency_decode"}
    assert "profiling" in results["pruning"]["wall_time_s"]


def test_params_job_records_why_its_latency_fraction_is_missing(make_cfg, monkeypatch,
                                                                caplog):
    def unprofilable(*args):
        raise PrunelabError("latency does not grow with the units on this device")

    monkeypatch.setattr(latency, "shape_profile", unprofilable)
    results = pipeline.run(make_cfg("model=tiny_llama", "method=mag_sp", "benchmark=smoke",
                                    "logger=none", "schedule.ratio=0.3", *SPEED)).to_dict()
    details = results["pruning"]["details"]
    assert set(details["achieved"]) == {"params", "macs"}
    assert "does not grow" in details["achieved_unavailable"]["latency"]
    assert "does not grow" in details["achieved_unavailable"]["latency_decode"]
    assert _missing_fraction_levels(caplog) == {"WARNING"}  # a profile that failed warns


def _missing_fraction_levels(caplog) -> set[str]:
    return {r.levelname for r in caplog.records if r.getMessage().startswith("No achieved")}


def test_job_without_a_speed_up_profiles_only_its_budget(make_cfg, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="prunelab")
    profiled = []

    def profile(model, adapter, device, shape, vocab_size, cache_dir):
        profiled.append(shape.kind)
        return synthetic_profiles()(model, adapter, device, shape, vocab_size, cache_dir)

    monkeypatch.setattr(latency, "shape_profile", profile)
    details = pipeline.run(make_cfg("model=tiny_llama", "method=mag_sp", "benchmark=smoke",
                                    "logger=none", "schedule.ratio=0.3")).to_dict()[
        "pruning"]["details"]
    assert profiled == [] and set(details["achieved"]) == {"params", "macs"}
    assert "times no speed" in details["achieved_unavailable"]["latency_decode"]
    details = pipeline.run(make_cfg("model=tiny_llama", "method=mag_sp", "benchmark=smoke",
                                    "logger=none", "schedule.ratio=0.3",
                                    "schedule.target=latency", "overwrite=true")).to_dict()[
        "pruning"]["details"]
    assert profiled == ["prefill"] and set(details["achieved"]) == {"params", "macs", "latency"}
    details = pipeline.run(make_cfg("model=tiny_llama", "method=mag_sp", "benchmark=smoke",
                                    "logger=none", "schedule.ratio=0.3", "overwrite=true",
                                    *SPEED[:3])).to_dict()["pruning"]["details"]
    assert profiled == ["prefill"] and set(details["achieved"]) == {"params", "macs"}
    assert "no speed-up" in details["achieved_unavailable"]["latency"]
    assert _missing_fraction_levels(caplog) == {"INFO"}  # not profiled by design: no warning
