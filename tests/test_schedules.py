"""Every schedule meets its budget within one unit's cost, respects floors and protection."""

from __future__ import annotations

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.models.adapters import adapter_for
from prunelab.registry import SCHEDULES
from prunelab.schedules import build_pools
from prunelab.schedules.base import ScheduleParams
from prunelab.schedules.explicit import ExplicitParams
from tests.helpers.tiny import tiny_model

LAYERS = 6


def pools_for(layout: str, seed: int = 0):
    model = tiny_model(layout, layers=LAYERS)
    layers = adapter_for(model).layers
    g = torch.Generator().manual_seed(seed)
    heads = [torch.randn(layer.geometry.num_heads, generator=g) for layer in layers]
    channels = [torch.randn(layer.geometry.intermediate_size, generator=g) for layer in layers]
    return build_pools(layers, heads, channels), layers


def removed_cost(pools, removed):
    return sum(sum(p.costs[: len(units)]) for p, units in zip(pools, removed))


def largest_unit(pools):
    return max(c for p in pools for c in p.costs)


SCHEDULE_CASES = [
    ("uniform", ScheduleParams(ratio=0.3)),
    ("uniform", ScheduleParams(ratio=0.5, attention_ratio=0.4)),
    ("uniform", ScheduleParams(ratio=0.2, protect_first=1, protect_last=1)),
    ("global", ScheduleParams(ratio=0.3)),
    ("global", ScheduleParams(ratio=0.6, attention_ratio=0.5)),
    ("global", ScheduleParams(ratio=0.5, min_heads=1, min_channels=4)),
    ("block", ScheduleParams(ratio=0.3)),
    ("block", ScheduleParams(ratio=0.5, protect_first=1, min_heads=1)),
    ("explicit", ExplicitParams(ratios=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])),
    ("explicit", ExplicitParams(attention_ratios=[0, 0, 1, 1, 0.5, 0.5],
                                mlp_ratios=[0.9, 0.1, 0.2, 0.3, 0.0, 1.0])),
]


@pytest.mark.parametrize("layout", ["mha", "gqa"])
@pytest.mark.parametrize("name,params", SCHEDULE_CASES)
def test_budget_met_within_one_unit(layout, name, params):
    pools, _ = pools_for(layout)
    schedule = SCHEDULES.get(name)(params)
    allocation = schedule.allocate(pools, LAYERS)
    budget = sum(allocation.budgets.values())
    cost = removed_cost(pools, allocation.removed)
    assert abs(cost - budget) <= largest_unit(pools)
    if name != "explicit":
        total = sum(p.total_cost for p in pools)
        assert budget == pytest.approx(params.ratio * total)


def test_removal_is_lowest_scores_first():
    pools, _ = pools_for("gqa", seed=3)
    allocation = SCHEDULES.get("global")(ScheduleParams(ratio=0.4)).allocate(pools, LAYERS)
    for pool, units in zip(pools, allocation.removed):
        kept = [u for u in range(pool.size) if u not in units]
        if units and kept:
            assert max(pool.scores[units]) <= min(pool.scores[kept])


def test_uniform_gives_every_block_the_same_fraction():
    pools, _ = pools_for("mha")
    allocation = SCHEDULES.get("uniform")(ScheduleParams(ratio=0.5)).allocate(pools, LAYERS)
    for pool, units in zip(pools, allocation.removed):
        fraction = sum(pool.costs[: len(units)]) / pool.total_cost
        assert abs(fraction - 0.5) <= max(pool.costs) / pool.total_cost + 1e-9


def test_protected_blocks_and_floors():
    pools, _ = pools_for("gqa")
    params = ScheduleParams(ratio=0.25, protect_first=1, protect_last=2, min_heads=2,
                            min_channels=5)
    allocation = SCHEDULES.get("global")(params).allocate(pools, LAYERS)
    for pool, units in zip(pools, allocation.removed):
        if pool.layer in (0, LAYERS - 2, LAYERS - 1):
            assert units == []
        floor = 2 if pool.module == "attention" else 5
        assert pool.size - len(units) >= floor


def test_gqa_kv_cost_counted_once_group_is_empty():
    pools, layers = pools_for("gqa")
    attention = pools[0]
    g = layers[0].geometry
    d, hd = g.hidden_size, g.head_dim
    assert attention.total_cost == 2 * d * hd * g.num_heads + 2 * d * hd * g.num_kv_heads
    kv_steps = [c for c in attention.costs if c > 2 * d * hd]
    assert len(kv_steps) == g.num_kv_heads


def test_unreachable_budget_is_an_error():
    pools, _ = pools_for("mha")
    params = ScheduleParams(ratio=0.9, min_heads=4, min_channels=40)
    with pytest.raises(PrunelabError, match="cannot be met"):
        SCHEDULES.get("global")(params).allocate(pools, LAYERS)


def test_split_outside_range_is_an_error():
    pools, _ = pools_for("mha")
    with pytest.raises(PrunelabError, match="attention_ratio"):
        SCHEDULES.get("uniform")(ScheduleParams(ratio=0.1, attention_ratio=1.0)).allocate(
            pools, LAYERS)


def test_explicit_needs_one_ratio_per_block():
    pools, _ = pools_for("mha")
    with pytest.raises(PrunelabError, match="one ratio per block"):
        SCHEDULES.get("explicit")(ExplicitParams(ratios=[0.1, 0.2])).allocate(pools, LAYERS)


def test_global_cannot_run_block_by_block():
    pools, _ = pools_for("mha")
    with pytest.raises(PrunelabError, match="schedule=uniform or schedule=explicit"):
        SCHEDULES.get("global")(ScheduleParams()).pool_targets(pools, LAYERS)


@pytest.mark.parametrize("name", ["global", "uniform"])
@pytest.mark.parametrize("head_groups", ["even", "whole"])
def test_head_groups_keep_gqa_groups_even_or_whole(name, head_groups):
    model = tiny_model("gqa", layers=LAYERS)
    layers = adapter_for(model).layers
    g = torch.Generator().manual_seed(5)
    heads = [torch.randn(6, generator=g) for _ in layers]
    channels = [torch.randn(layer.geometry.intermediate_size, generator=g) for layer in layers]
    pools = build_pools(layers, heads, channels, head_groups=head_groups)
    single = build_pools(layers, heads, channels)
    assert [p.total_cost for p in pools] == pytest.approx([p.total_cost for p in single])
    allocation = SCHEDULES.get(name)(ScheduleParams(ratio=0.5)).allocate(pools, LAYERS)
    cut = 0
    for pool, units in zip(pools, allocation.removed):
        if pool.module != "attention":
            continue
        gone = pool.removed_indices(units)
        per_group = [len(gone & {h for h in range(6) if h // 3 == kv}) for kv in range(2)]
        if head_groups == "even":
            assert per_group[0] == per_group[1]
        else:
            assert set(per_group) <= {0, 3}
        cut += len(gone)
    assert cut > 0
    assert abs(removed_cost(pools, allocation.removed) - sum(allocation.budgets.values())) \
        <= largest_unit(pools)


def test_even_units_pair_the_lowest_heads_of_each_group():
    model = tiny_model("gqa", layers=1)
    layer = adapter_for(model).layers[0]
    scores = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.8, 0.2])  # group 0: heads 0-2, group 1: 3-5
    pool = build_pools([layer], [scores], [torch.zeros(40)], head_groups="even")[0]
    assert pool.members == [[1, 5], [0, 3], [2, 4]]
    assert pool.scores.tolist() == pytest.approx([0.15, 0.4, 0.85])
    assert pool.removed_indices([pool.order[0]]) == {1, 5}


def test_head_groups_any_keeps_old_job_fingerprints(make_cfg):
    import copy

    from prunelab.config.schema import job_container
    from prunelab.tracking.identity import job_fingerprint

    config = job_container(make_cfg("method=flap"))
    old = copy.deepcopy(config)
    del old["schedule"]["head_groups"]  # a job from before the option existed
    assert job_fingerprint(config) == job_fingerprint(old)
    even = job_container(make_cfg("method=flap", "schedule.head_groups=even"))
    assert job_fingerprint(even) != job_fingerprint(config)
