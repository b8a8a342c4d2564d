"""Budgets in parameters, MACs and latency: prices, fits, and budgets met within one unit."""

from __future__ import annotations

import pytest
import torch

from prunelab import pipeline
from prunelab.config.schema import validate
from prunelab.errors import ConfigError, PrunelabError
from prunelab.eval import latency
from prunelab.eval.speed import macs_per_token
from prunelab.models.adapters import adapter_for
from prunelab.registry import SCHEDULES
from prunelab.schedules import build_pools
from prunelab.schedules.base import ScheduleParams
from prunelab.schedules.costs import LatencyCost, MacCost, ParameterCost, UnitCosts
from prunelab.schedules.targets import total_cost
from tests.helpers.tiny import tiny_model

LAYERS = 6
#: seconds per token: a head, a KV head, the attention's fixed part; a channel, the MLP's
SYNTHETIC = LatencyCost(UnitCosts(3e-6, 2e-6, 40e-6), UnitCosts(1e-7, 0.0, 25e-6))
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


def test_latency_fit_recovers_a_linear_profile():
    attention = [([h, k], 1e-5 + 2e-6 * h + 5e-7 * k) for h, k in [(9, 3), (3, 3), (3, 1),
                                                                   (1, 1)]]
    mlp = [([c], 2e-5 + 1e-8 * c) for c in (1536, 1152, 768, 384)]
    profile = latency.profile_from_points(attention, mlp, {"device": "test"})
    assert profile.attention.fixed == pytest.approx(1e-5)
    assert profile.attention.per_unit == pytest.approx(2e-6)
    assert profile.attention.per_group == pytest.approx(5e-7)
    assert (profile.mlp.fixed, profile.mlp.per_unit) == pytest.approx((2e-5, 1e-8))


def test_latency_profile_refused_when_time_does_not_grow():
    flat = [([h, k], 1e-5 - 1e-7 * h) for h, k in [(4, 2), (2, 2), (2, 1), (1, 1)]]
    with pytest.raises(PrunelabError, match="latency profile is not possible on cpu"):
        latency.profile_from_points(flat, [([c], 1e-6 * c) for c in (8, 4)], {"device": "cpu"})


def test_measured_points_cover_the_widths():
    geometry = adapter_for(tiny_model("gqa")).layers[0].geometry
    attention, mlp = latency.measure_points(geometry, torch.device("cpu"), torch.float32,
                                            seqlen=8, batch=1, repeats=1)
    assert sorted(tuple(x) for x, _ in attention) == [(1, 1), (2, 2), (3, 1), (6, 2)]
    assert sorted(x[0] for x, _ in mlp) == [10, 20, 30, 40]
    assert all(t > 0 for _, t in attention + mlp)


def test_unknown_target_lists_the_valid_ones(make_cfg):
    with pytest.raises(ConfigError, match="'flops' is not one of params, macs, latency"):
        validate(make_cfg("schedule.target=flops"))


def test_job_records_achieved_fraction_in_every_currency(make_cfg, monkeypatch):
    profile = latency.LatencyProfile(SYNTHETIC.attention_costs, SYNTHETIC.mlp_costs, {})
    monkeypatch.setattr(latency, "latency_profile", lambda *args: profile)
    results = pipeline.run(make_cfg("model=tiny_llama_gqa", "method=flap", "benchmark=smoke",
                                    "calibration.nsamples=8", "logger=none",
                                    "schedule.target=macs", "schedule.ratio=0.3")).to_dict()
    details = results["pruning"]["details"]
    assert details["target"]["name"] == "macs"
    assert set(details["achieved"]) == {"params", "macs", "latency"}
    assert 0 < details["achieved"]["latency"] < 1 and not details["achieved_unavailable"]
    assert details["achieved"]["macs"] == pytest.approx(0.3, abs=0.05)
    assert results["pruning"]["ratio_asked"] == pytest.approx(0.3, abs=1e-9)

    results = pipeline.run(make_cfg("model=tiny_llama_gqa", "method=mag_sp", "benchmark=smoke",
                                    "logger=none", "schedule.target=latency",
                                    "schedule.ratio=0.3", "overwrite=true")).to_dict()
    details = results["pruning"]["details"]
    assert set(details["achieved"]) == {"params", "macs", "latency"}
    assert "profiling" in results["pruning"]["wall_time_s"]


def test_params_job_records_why_its_latency_fraction_is_missing(make_cfg, monkeypatch):
    def unprofilable(*args):
        raise PrunelabError("latency does not grow with the units on this device")

    monkeypatch.setattr(latency, "latency_profile", unprofilable)
    results = pipeline.run(make_cfg("model=tiny_llama", "method=mag_sp", "benchmark=smoke",
                                    "logger=none", "schedule.ratio=0.3")).to_dict()
    details = results["pruning"]["details"]
    assert set(details["achieved"]) == {"params", "macs"}
    assert "does not grow" in details["achieved_unavailable"]["latency"]
