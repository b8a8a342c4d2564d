"""Speed measurement: MACs equal a hand count, the timing path runs, bad grids fail early."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from prunelab import pipeline
from prunelab.config.schema import SpeedSpec, job_container, validate
from prunelab.errors import ConfigError, PrunelabError
from prunelab.eval.speed import macs_per_token, measure_speed
from prunelab.models.adapters import adapter_for
from prunelab.models.plan import LayerPlan, PruningPlan
from prunelab.models.surgery import prune_model
from prunelab.tracking.identity import job_fingerprint
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


def test_a_reference_is_timed_interleaved_and_gives_the_paired_speedup():
    model, dense = tiny_model("mha"), tiny_model("mha", seed=1)
    spec = SpeedSpec(grid=[[1, 16]], decode_tokens=3, decode_prompt=2, warmup=1, repeats=4,
                     reference="dense")
    result = measure_speed(model, adapter_for(model), spec, torch.device("cpu"), 257, dense)
    for timing in (result["prefill"]["1x16"], result["decode"]):
        reference = timing["reference"]["times_s"]
        assert len(reference) == len(timing["times_s"]) == 4
        ratios = [r / m for r, m in zip(reference, timing["times_s"])]
        speedup = timing["speedup"]
        assert speedup["ratio"] == pytest.approx(math.prod(ratios) ** (1 / 4))
        assert speedup["low"] <= speedup["ratio"] <= speedup["high"]
        assert speedup["repeats"] == 4 and speedup["confidence"] == 0.95
    assert result["settings"]["reference"] == "dense"
    alone = measure_speed(model, adapter_for(model), SpeedSpec(grid=[[1, 16]], repeats=2),
                          torch.device("cpu"), 257)
    assert "speedup" not in alone["prefill"]["1x16"]


def test_a_pruned_job_records_its_speedup_over_dense(make_cfg, tmp_path):
    overrides = ["model=tiny_llama", "benchmark=smoke", "calibration.nsamples=8",
                 "logger=none", "+benchmark.speed={grid: [[1, 32]], decode_tokens: 3, "
                 "repeats: 3, reference: dense}"]
    pruned = pipeline.run(make_cfg(*overrides, "method=flap", output_dir=tmp_path / "flap"))
    timing = pruned.metrics.speed.prefill["1x32"]
    assert timing.speedup is not None and timing.reference is not None
    assert pruned.metrics.speed.decode.speedup is not None
    flat = pruned.flat_metrics()
    assert flat["speed/prefill_1x32/speedup"] == timing.speedup.ratio
    assert flat["speed/decode/speedup_low"] == pruned.metrics.speed.decode.speedup.low
    dense = pipeline.run(make_cfg(*overrides, "method=dense", output_dir=tmp_path / "dense"))
    assert dense.metrics.speed.prefill["1x32"].speedup is None  # nothing to compare with


def test_reference_none_keeps_old_job_fingerprints(make_cfg):
    config = job_container(make_cfg("benchmark=default"))
    old = copy.deepcopy(config)
    del old["benchmark"]["speed"]["reference"], old["benchmark"]["speed"]["confidence"]
    assert job_fingerprint(config) == job_fingerprint(old)
    paired = job_container(make_cfg("benchmark=default", "benchmark.speed.reference=dense"))
    assert job_fingerprint(paired) != job_fingerprint(config)


@pytest.mark.parametrize("overrides, message", [
    (["benchmark.speed.reference=dense", "benchmark.speed.repeats=1"], "repeats >= 2"),
    (["benchmark.speed.confidence=1.5"], r"confidence must be in \(0, 1\)"),
    (["benchmark.speed.reference=pruned"], "'pruned' is not one of none, dense"),
])
def test_bad_speed_reference_settings(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg("benchmark=speed", *overrides))


def test_a_speed_reference_from_an_already_pruned_model_is_refused(make_cfg, tmp_path):
    base = ["model=tiny_llama", "benchmark=smoke", "calibration.nsamples=8", "logger=none"]
    pipeline.run(make_cfg(*base, "method=flap", "save_model=true",
                          output_dir=tmp_path / "pruned"))
    cfg = make_cfg(*base, "model=local", f"model.path={tmp_path / 'pruned' / 'model'}",
                   "+model.trust_remote_code=true", "method=flap",
                   "+benchmark.speed={grid: [[1, 16]], repeats: 2, reference: dense}",
                   output_dir=tmp_path / "again")
    with pytest.raises(PrunelabError, match="reference=dense needs the dense model as speed"):
        pipeline.run(cfg)
