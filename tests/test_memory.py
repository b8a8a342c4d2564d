"""The memory model (models/memory.py), the chunked LM head, and what a job records of both."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunelab import pipeline
from prunelab.config.schema import validate
from prunelab.errors import PrunelabError
from prunelab.models import memory
from prunelab.models.adapters import adapter_for
from prunelab.models.lm_head import next_token_nll, tokens_per_chunk
from prunelab.models.plan import PruningPlan
from prunelab.models.surgery import prune_model
from tests.helpers.tiny import tiny_model


@pytest.mark.parametrize("layout", ["mha", "gqa", "qwen2", "gemma3", "gemma3_gqa"])
def test_geometry_counts_every_parameter_of_a_dense_model(layout):
    model = tiny_model(layout)
    geometry = memory.Geometry.from_config(model.config)
    biases = sum(p.numel() for name, p in model.named_parameters() if name.endswith("bias"))
    assert geometry.total_parameters() == sum(p.numel() for p in model.parameters()) - biases
    assert geometry.prunable_parameters() == adapter_for(model).prunable_parameter_count() \
        - biases


def test_geometry_of_a_pruned_model_reads_its_per_block_widths():
    model = tiny_model("gqa")
    adapter = adapter_for(model)
    removed = [{"attention": {0, 1, 2}, "mlp": set(range(10))},
               {"attention": set(), "mlp": set()},
               {"attention": {0, 1, 2, 3, 4, 5}, "mlp": set(range(40))}]
    pruned = prune_model(model, adapter, PruningPlan.from_removed(adapter, removed))
    geometry = memory.Geometry.from_config(pruned.config)
    assert [(b.heads, b.kv_heads, b.intermediate) for b in geometry.blocks] == [
        (3, 1, 30), (6, 2, 40), (0, 0, 0)]
    assert geometry.total_parameters() == sum(p.numel() for p in pruned.parameters())


def test_estimate_by_hand(make_cfg):
    """Default-job phases of a hand-sized geometry: every term written out."""
    h, hd, heads, kv, inter, vocab, layers = 64, 16, 4, 2, 96, 1000, 3
    block = memory.BlockShape(heads, kv, inter)
    geometry = memory.Geometry(h, hd, vocab, True, (block,) * layers, h, h)
    job = validate(make_cfg("calibration.batch_size=2", "calibration.seqlen=32",
                            "benchmark.batch_size=4", "schedule.ratio=0.5"))
    phases = memory.estimate(geometry, job, frozenset(), prunes=True, on_cuda=False)
    block_params = (2 * heads + 2 * kv) * hd * h + 3 * h * inter + 2 * h
    weights = 4 * (vocab * h + h + layers * block_params)
    assert phases["load"].host_bytes == weights
    activations = 4 * 2 * 32 * (6 * h + (heads + 2 * kv) * hd + 3 * inter) + 4 * 2 * heads * 32 ** 2
    statistics = layers * 2 * 8 * (heads * hd + inter)
    assert phases["calibration"].parts == {"weights": weights, "activations": activations,
                                           "statistics": statistics}
    assert phases["surgery"].host_bytes == weights + 4 * block_params
    pruned = weights - int(0.5 * layers * (block_params - 2 * h) * 4)
    ppl = phases["perplexity/wikitext2"]
    assert ppl.parts["weights"] == pruned
    assert ppl.parts["hidden_states"] == 4 * 128 * h * 4
    assert ppl.device_bytes == 0 and ppl.host_bytes == sum(ppl.parts.values())
    assert "zero_shot" not in phases and "speed" in phases


def test_estimate_on_cuda_keeps_offloaded_buffers_on_the_host(make_cfg):
    geometry = memory.Geometry.from_config(tiny_model("gqa").config)
    job = validate(make_cfg("calibration.offload=true", "calibration.nsamples=16"))
    phases = memory.estimate(geometry, job, frozenset(), prunes=True, on_cuda=True)
    calibration = phases["calibration"]
    assert calibration.host_bytes == calibration.parts["buffers"] == 2 * 16 * 128 * 48 * 4
    assert calibration.device_bytes == sum(calibration.parts.values()) - calibration.host_bytes
    assert phases["load"].host_bytes == phases["load"].device_bytes


def test_dense_jobs_have_no_pruning_phases(make_cfg):
    geometry = memory.Geometry.from_config(tiny_model("mha").config)
    job = validate(make_cfg("method=dense"))
    phases = memory.estimate(geometry, job, frozenset(), prunes=False, on_cuda=False)
    assert "calibration" not in phases and "surgery" not in phases
    assert phases["perplexity/c4"].parts["weights"] == phases["load"].host_bytes


def test_chunked_nll_equals_whole_batch_cross_entropy():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden, targets = torch.randn(37, 8), torch.randint(0, 50, (37,))
    budget = 2 * 50 * 4 * 5  # five tokens per chunk
    assert tokens_per_chunk(50, 4, budget) == 5
    with torch.no_grad():
        whole = F.cross_entropy(head(hidden), targets, reduction="sum").double()
    chunked = next_token_nll(hidden, targets, head, budget)
    assert chunked == pytest.approx(float(whole), rel=1e-6)


def test_a_job_records_predicted_and_measured_peaks(make_cfg):
    results = pipeline.run(make_cfg("model=tiny_llama", "method=flap", "benchmark=smoke",
                                    "calibration.nsamples=8", "logger=none")).to_dict()
    mem = results["memory"]
    assert mem["kind"] in ("rss_peak", "rss_process_peak")
    assert {"load", "calibration", "surgery", "perplexity/wikitext2"} <= set(mem["measured_bytes"])
    assert set(mem["predicted_host_bytes"]) <= set(mem["measured_bytes"])
    assert all(v >= mem["baseline_bytes"] > 0 for v in mem["predicted_host_bytes"].values())
    assert mem["process_peak_bytes"] >= max(mem["measured_bytes"].values())


def test_a_streamed_estimate_holds_one_block_or_the_fixed_parts(make_cfg):
    h, hd, heads, kv, inter, vocab, layers = 64, 16, 4, 2, 96, 1000, 3
    geometry = memory.Geometry(h, hd, vocab, True, (memory.BlockShape(heads, kv, inter),) * layers,
                               h, h)
    job = validate(make_cfg("memory=streamed", "memory.evaluation=layerwise", "~benchmark.speed",
                            "calibration.nsamples=1000", "calibration.seqlen=32",
                            "calibration.batch_size=2", "memory.buffer_budget_gb=0.001"))
    phases = memory.estimate(geometry, job, frozenset(), prunes=True, on_cuda=False)
    block = 4 * ((2 * heads + 2 * kv) * hd * h + 3 * h * inter + 2 * h)
    fixed = 4 * (vocab * h + h)
    assert phases["load"].host_bytes == 0
    assert phases["calibration"].parts["weights"] == max(block, fixed)
    whole = 2 * 1000 * 32 * h * 4
    assert whole > 1e6  # over budget: only the slices in use are resident
    assert phases["calibration"].parts["buffers"] == 2 * 2 * 32 * h * 4
    assert phases["surgery"].parts == {"weights": max(2 * block, fixed)}
    assert phases["perplexity/wikitext2"].parts["weights"] == max(block, fixed)

    zero_shot = validate(make_cfg("memory=streamed", "memory.evaluation=layerwise",
                                  "benchmark=zeroshot_smoke"))
    parts = memory.estimate(geometry, zero_shot, frozenset(), prunes=True,
                            on_cuda=False)["zero_shot"].parts
    assert "logits" not in parts  # only answer positions reach the LM head
    assert parts["weights"] == max(block, fixed)
    # 4 documents x 7 tasks x 4 choices of 256 tokens, in and out, never spilled
    assert parts["buffers"] == 2 * 4 * 7 * 4 * 256 * h * 4


def test_a_budget_the_job_cannot_meet_is_refused_before_loading(make_cfg, monkeypatch, tmp_path):
    def no_loading(*_args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pipeline, "load_streamed", no_loading)
    monkeypatch.setattr(pipeline, "load_model", no_loading)
    cfg = make_cfg("model=tiny_llama", "memory.host_budget_gb=0.001", "benchmark=smoke",
                   "logger=none")
    with pytest.raises(PrunelabError, match=r"(?s)host_budget_gb=0.001 .*below what phase "
                                            r"'\w+' is expected to need.*memory=streamed"):
        pipeline.run(cfg)
