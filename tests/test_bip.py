"""LLM-BIP: scores equal the measured change of a block's output (or bound it), per block.

On Gemma-3 the change passes through a post-norm and the scores are its first-order value,
so they equal the measured change to within the tolerance below, not exactly.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from prunelab import pipeline
from prunelab.calibration.runner import run_layerwise
from prunelab.calibration.statistics import MlpResponse
from prunelab.config.schema import validate
from prunelab.errors import ConfigError, PrunelabError, UnsupportedModelError
from prunelab.methods.bip import BIP, BIPParams
from prunelab.models.adapters import adapter_for
from prunelab.models.layerwise import capture_block_inputs
from prunelab.pruning import checked_unit_scores
from prunelab.registry import SCHEDULES
from prunelab.schedules import build_pools
from prunelab.schedules.base import ScheduleParams
from tests.helpers.tiny import tiny_model

CPU = torch.device("cpu")


def calibrated(layout: str):
    """A float64 tiny model, its BIP statistics, and every block's input and output."""
    model = tiny_model(layout).double()
    adapter = adapter_for(model)
    samples = torch.randint(0, 257, (6, 16), generator=torch.Generator().manual_seed(0))
    stats = run_layerwise(adapter, samples, list(BIP.statistics), 3, CPU)
    x, kwargs = capture_block_inputs(adapter, samples, 6, CPU)
    ios = []
    with torch.no_grad():
        for block, block_kwargs in zip(adapter.decoder_layers, kwargs):
            y = block(x, **block_kwargs)
            y = y[0] if isinstance(y, tuple) else y
            ios.append((x, y))
            x = y
    return adapter, stats, ios, kwargs


#: Relative tolerance of score against measured change: exact, or first order (post-norm).
TOLERANCE = {"mha": 1e-5, "gqa": 1e-5, "gemma3": 0.05}


def output_change(block, x, y, kwargs, weight: torch.Tensor, columns) -> torch.Tensor:
    """Mean per-token L2 change of the block output with ``weight[:, columns]`` zeroed."""
    saved = weight[:, columns].clone()
    with torch.no_grad():
        weight[:, columns] = 0
        out = block(x, **kwargs)
        weight[:, columns] = saved
    out = out[0] if isinstance(out, tuple) else out
    return (out - y).norm(dim=-1).mean()


@pytest.mark.parametrize("layout", sorted(TOLERANCE))
def test_channel_importance_is_the_measured_block_output_change(layout):
    adapter, stats, ios, kwargs = calibrated(layout)
    method = BIP(BIPParams(lipschitz="none"))
    for index, (layer, (x, y)) in enumerate(zip(adapter.layers, ios)):
        _, channels = method.importance(layer, stats[index])
        block = adapter.decoder_layers[index]
        for j in (0, 7, layer.geometry.intermediate_size - 1):
            measured = output_change(block, x, y, kwargs[index], layer.down_proj.weight, [j])
            assert float(channels[j]) == pytest.approx(float(measured), rel=TOLERANCE[layout])


@pytest.mark.parametrize("layout", sorted(TOLERANCE))
def test_head_score_without_lipschitz_is_the_attention_output_change(layout):
    adapter, stats, ios, kwargs = calibrated(layout)
    method = BIP(BIPParams(lipschitz="none"))
    for index, (layer, (x, _)) in enumerate(zip(adapter.layers, ios)):
        heads, _ = method.importance(layer, stats[index])
        hd = layer.head_dim
        outputs = []
        # what the attention adds to the residual stream: after the post-norm where one is
        added = layer.o_proj if layer.attn_post_norm is None else layer.attn_post_norm
        handle = added.register_forward_hook(lambda m, i, o, outputs=outputs: outputs.append(o))
        try:
            block = adapter.decoder_layers[index]
            for g in range(layer.geometry.num_heads):
                outputs.clear()
                output_change(block, x, x, kwargs[index], layer.o_proj.weight, slice(0, 0))
                output_change(block, x, x, kwargs[index], layer.o_proj.weight,
                              slice(g * hd, (g + 1) * hd))
                measured = (outputs[1] - outputs[0]).norm(dim=-1).mean()
                assert float(heads[g]) == pytest.approx(float(measured), rel=TOLERANCE[layout])
        finally:
            handle.remove()


@pytest.mark.parametrize("layout", sorted(TOLERANCE))
def test_bound_is_an_upper_bound_of_the_block_output_change(layout, capsys):
    adapter, stats, ios, kwargs = calibrated(layout)
    bound = BIP(BIPParams(lipschitz="bound"))
    ratios = []
    for index, (layer, (x, y)) in enumerate(zip(adapter.layers, ios)):
        heads, _ = bound.importance(layer, stats[index])
        hd = layer.head_dim
        for g in range(layer.geometry.num_heads):
            measured = output_change(adapter.decoder_layers[index], x, y, kwargs[index],
                                     layer.o_proj.weight, slice(g * hd, (g + 1) * hd))
            assert float(heads[g]) >= float(measured)
            ratios.append(float(heads[g]) / float(measured))
    with capsys.disabled():
        print(f"\n[{layout}] bound / measured block-output change: median "
              f"{statistics.median(ratios):.1f}, min {min(ratios):.2f}, max {max(ratios):.1f}")


@pytest.mark.parametrize("layout", ["gqa", "gemma3"])
def test_empirical_lipschitz_is_between_none_and_bound(layout):
    adapter, stats, _, _ = calibrated(layout)
    for index, layer in enumerate(adapter.layers):
        empirical = BIP(BIPParams(lipschitz="empirical")).lipschitz(layer, stats[index])
        assert 0 < empirical < BIP(BIPParams(lipschitz="bound")).lipschitz(layer, stats[index])


def test_block_schedule_keeps_every_block_at_the_ratio():
    adapter, stats, _, _ = calibrated("gqa")
    method = BIP(BIPParams())
    scores = [method.score_block(i, layer, stats[i], False)
              for i, layer in enumerate(adapter.layers)]
    pools = build_pools(adapter.layers, [s.heads for s in scores], [s.channels for s in scores])
    allocation = SCHEDULES.get("block")(ScheduleParams(ratio=0.4)).allocate(pools, 3)
    largest = max(c for p in pools for c in p.costs)
    for layer in range(3):
        members = [i for i, p in enumerate(pools) if p.layer == layer]
        removed = sum(sum(pools[i].costs[:len(allocation.removed[i])]) for i in members)
        block_cost = sum(pools[i].total_cost for i in members)
        assert abs(removed - 0.4 * block_cost) <= largest


def test_unknown_estimator_lists_the_valid_ones(make_cfg):
    with pytest.raises(ConfigError, match="'spectral' is not one of bound, empirical, none"):
        validate(make_cfg("method=bip", "method.lipschitz=spectral"))


def test_mlp_without_an_activation_to_find_is_refused():
    model = tiny_model("mha")
    for block in adapter_for(model).decoder_layers:
        del block.mlp.act_fn
    with pytest.raises(UnsupportedModelError, match="finds no activation"):
        MlpResponse(adapter_for(model).layers[0]).attach()


def test_nan_scores_are_an_error():
    adapter, stats, _, _ = calibrated("mha")
    stats[0]["head_output_norm"]["mean_norm"][0] = float("nan")
    with pytest.raises(PrunelabError, match="NaN or Inf"):
        checked_unit_scores(BIP(BIPParams()), 0, adapter.layers[0], stats[0], False)


def test_second_ratio_reuses_the_statistics(make_cfg, tmp_path):
    common = ["model=tiny_llama_gqa", "method=bip", "calibration.nsamples=8", "benchmark=smoke",
              "logger=none", f"paths.cache_dir={tmp_path / 'cache'}"]
    first = pipeline.run(make_cfg(*common, "schedule.ratio=0.2",
                                  output_dir=tmp_path / "a")).to_dict()
    second = pipeline.run(make_cfg(*common, "schedule.ratio=0.5", "method.lipschitz=empirical",
                                   output_dir=tmp_path / "b")).to_dict()
    assert first["pruning"]["details"]["calibration"]["cache_hit"] is False
    assert second["pruning"]["details"]["calibration"]["cache_hit"] is True
