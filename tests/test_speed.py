"""Speed measurement: MACs equal a hand count, the timing path runs, bad grids fail early."""

from __future__ import annotations

import pytest
import torch

from prunelab import pipeline
from prunelab.config.schema import SpeedSpec, validate
from prunelab.errors import ConfigError, PrunelabError
from prunelab.eval.speed import macs_per_token, measure_speed
from prunelab.models.adapters import adapter_for
from prunelab.models.plan import LayerPlan, PruningPlan
from prunelab.models.surgery import prune_model
from tests.helpers.tiny import tiny_model


def test_macs_equal_a_hand_count():
    model = tiny_model("gqa")  # hidden 48, 6 query / 2 KV heads of 8, ffn 40, 3 blocks
    d, hd, hq, hkv, ffn, vocab, context = 48, 8, 6, 2, 40, 257, 10.5
    per_block = d * hq * hd * 2 + d * hkv * hd * 2 + 3 * d * ffn
    macs = macs_per_token(adapter_for(model), context)
    assert macs["linear"] == 3 * per_block
    assert macs["attention"] == 3 * 2 * hq * hd * context
    assert macs["lm_head"] == d * vocab
    assert macs["total"] == 3 * per_block + 3 * 2 * hq * hd * context + d * vocab


def test_macs_follow_the_pruned_geometry():
    model = tiny_model("gqa")
    # block 0 loses everything, block 1 keeps one head (one KV head) and 5 channels
    plan = PruningPlan([LayerPlan([], []), LayerPlan([0], list(range(5))),
                        LayerPlan(list(range(6)), list(range(40)))])
    pruned = prune_model(model, adapter_for(model), plan, None)
    macs = macs_per_token(adapter_for(pruned), 4.0)
    d, hd = 48, 8
    block1 = d * hd * 2 + d * hd * 2 + 3 * d * 5 + 2 * hd * 4.0
    block2 = d * 6 * hd * 2 + d * 2 * hd * 2 + 3 * d * 40 + 2 * 6 * hd * 4.0
    assert macs["linear"] + macs["attention"] == block1 + block2


def test_measure_speed_records_every_field():
    model = tiny_model("mha")
    spec = SpeedSpec(grid=[[1, 16], [2, 8]], decode_tokens=4, decode_prompt=3, warmup=1,
                     repeats=2)
    result = measure_speed(model, adapter_for(model), spec, torch.device("cpu"), 257)
    assert set(result["prefill"]) == {"1x16", "2x8"}
    for shape in result["prefill"].values():
        assert len(shape["times_s"]) == 2 and shape["min_s"] <= shape["median_s"] <= shape["max_s"]
        assert shape["tokens"] == 16 and shape["tokens_per_s"] > 0
        assert shape["peak_memory_bytes"] > 0
    decode = result["decode"]
    assert decode["new_tokens"] == 4 and decode["tokens_per_s"] > 0
    assert decode["macs_per_token"]["attention"] > 0
    assert result["settings"]["repeats"] == 2 and result["settings"]["torch_threads"] >= 1


def test_speed_in_a_job(make_cfg):
    results = pipeline.run(make_cfg("model=tiny_llama", "method=flap", "benchmark=smoke",
                                    "calibration.nsamples=8", "logger=none",
                                    "+benchmark.speed={grid: [[1, 32]], decode_tokens: 4, "
                                    "repeats: 2}")).to_dict()
    speed = results["metrics"]["speed"]
    assert speed["prefill"]["1x32"]["macs_per_token"]["total"] > 0
    assert "speed" in results["evaluation"]["parts_s"]


def test_speed_grid_beyond_context(make_cfg):
    with pytest.raises(PrunelabError, match=r"benchmark.speed.grid\[0\] seqlen=600"):
        pipeline.run(make_cfg("model=tiny_llama", "method=dense", "benchmark=speed",
                              "benchmark.speed.grid=[[1,600]]", "logger=none"))


def test_bad_speed_grid(make_cfg):
    with pytest.raises(ConfigError, match=r"\[batch, seqlen\]"):
        validate(make_cfg("benchmark=speed", "benchmark.speed.grid=[[1]]"))
