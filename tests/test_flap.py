"""FLAP scores and AL-AM decisions equal a hand computation; statistics equal direct ones."""

from __future__ import annotations

import json

import pytest
import torch

from prunelab import pipeline
from prunelab.calibration.runner import run_layerwise, run_streaming
from prunelab.calibration.statistics import STATISTICS, ChannelMoments
from prunelab.config.schema import validate
from prunelab.data.calibration import sample_calibration
from prunelab.data.corpora import load_corpus
from prunelab.errors import ConfigError, PrunelabError
from prunelab.methods.flap import fluctuation_metric
from prunelab.models.adapters import adapter_for
from prunelab.models.tiny import byte_tokenizer
from tests.helpers.tiny import tiny_model


def captured_inputs(model, tokens):
    """o_proj and down_proj inputs of every block from one plain full-model forward."""
    adapter = adapter_for(model)
    seen = {}
    handles = []
    for i, layer in enumerate(adapter.layers):
        for name, proj in (("A", layer.o_proj), ("a", layer.down_proj)):
            handles.append(proj.register_forward_hook(
                lambda m, inp, out, key=(i, name): seen.setdefault(key, []).append(inp[0])))
    with torch.no_grad():
        for batch in tokens.split(3):
            model(batch)
    for h in handles:
        h.remove()
    return {k: torch.cat(v).reshape(-1, v[0].shape[-1]).double() for k, v in seen.items()}


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_channel_moments_equal_direct(dtype, rtol):
    x = (torch.randn(5, 7, 11, dtype=dtype) * 3 + 1) + 100 * torch.arange(11, dtype=dtype)
    moments = ChannelMoments()
    for chunk in x.split(2):
        moments.update(chunk)
    flat = x.reshape(-1, 11).double()
    result = moments.result()
    for name, expected in [("mean", flat.mean(0)), ("var", flat.var(0)),
                           ("mean_sq", flat.pow(2).mean(0)), ("mean_abs", flat.abs().mean(0)),
                           ("sum_sq", flat.pow(2).sum(0))]:
        torch.testing.assert_close(result[name], expected, rtol=rtol, atol=0)


@pytest.mark.parametrize("layout", ["mha", "gqa", "gemma3"])
def test_layerwise_statistics_equal_full_forward(layout):
    model = tiny_model(layout)
    tokens = torch.randint(0, 257, (7, 12), generator=torch.Generator().manual_seed(0))
    stats = run_layerwise(adapter_for(model), tokens, ["attn_input", "mlp_input"], 3,
                          torch.device("cpu"))
    direct = captured_inputs(model, tokens)
    for i, layer_stats in enumerate(stats):
        for kind, key in (("attn_input", "A"), ("mlp_input", "a")):
            torch.testing.assert_close(layer_stats[kind]["mean"], direct[(i, key)].mean(0))
            torch.testing.assert_close(layer_stats[kind]["var"], direct[(i, key)].var(0))


def test_non_finite_statistics_are_an_error():
    model = tiny_model("mha")
    with torch.no_grad():
        adapter_for(model).layers[1].up_proj.weight.fill_(float("inf"))
    with pytest.raises(PrunelabError, match="NaN or Inf"):
        run_layerwise(adapter_for(model), torch.randint(0, 257, (2, 8)), ["mlp_input"], 2,
                      torch.device("cpu"))


def test_fluctuation_metrics_by_hand():
    moments = {"var": torch.tensor([1.0, 4.0], dtype=torch.float64),
               "mean_sq": torch.tensor([9.0, 16.0], dtype=torch.float64)}
    weight = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    assert fluctuation_metric("IFV", moments, weight).tolist() == [1.0, 4.0]
    assert fluctuation_metric("WIFV", moments, weight).tolist() == [10.0, 4.0 * 4.25]
    assert fluctuation_metric("WIFN", moments, weight).tolist() == [2.0 * 3, 1.25 * 4]


@torch.no_grad()
def hand_al_am(model, tokens, ratio):
    """FLAP AL-AM from scratch: WIFV, squared attention, standardise, cost-weighted ranking."""
    adapter = adapter_for(model)
    acts = captured_inputs(model, tokens)
    units = []  # (score, cost, layer, kind, index)
    total = 0
    for i, layer in enumerate(adapter.layers):
        g = layer.geometry
        d, hd = g.hidden_size, g.head_dim
        attn = (acts[(i, "A")].var(0) * layer.o_proj.weight.double().pow(2).sum(0)).pow(2)
        attn = (attn - attn.mean()) / attn.std()
        heads = attn.view(g.num_heads, hd).mean(1)
        mlp = acts[(i, "a")].var(0) * layer.down_proj.weight.double().pow(2).sum(0)
        mlp = (mlp - mlp.mean()) / mlp.std()
        units += [(float(s), 4 * d * hd, i, "head", h) for h, s in enumerate(heads)]
        units += [(float(s), 3 * d, i, "channel", c) for c, s in enumerate(mlp)]
        total += 4 * d * hd * g.num_heads + 3 * d * g.intermediate_size
    units.sort()
    budget, cumulative, best, best_gap = ratio * total, 0, 0, ratio * total
    for k, unit in enumerate(units, start=1):
        cumulative += unit[1]
        if abs(budget - cumulative) < best_gap:
            best, best_gap = k, abs(budget - cumulative)
    removed = {(u[2], u[3], u[4]) for u in units[:best]}
    kept = []
    for i, layer in enumerate(adapter.layers):
        g = layer.geometry
        kept.append({"heads": [h for h in range(g.num_heads) if (i, "head", h) not in removed],
                     "channels": [c for c in range(g.intermediate_size)
                                  if (i, "channel", c) not in removed]})
    return kept


def test_flap_al_am_keep_set_equals_hand_computation(make_cfg, tmp_path, data_dir):
    cfg = make_cfg("model=tiny_llama", "method=flap", "schedule=global", "schedule.ratio=0.3",
                   "calibration.nsamples=6", "calibration.seqlen=24", "calibration.batch_size=4",
                   "benchmark=smoke", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}")
    results = pipeline.run(cfg).to_dict()
    from prunelab.config.schema import validate
    from prunelab.models.loading import load_model

    run = validate(cfg)
    loaded = load_model(run.model, run.paths.cache_dir)
    corpus = load_corpus("wikitext2", "validation", data_dir)
    tokens = sample_calibration(corpus, byte_tokenizer(), 6, 24, 0, "joined", " ")
    expected = hand_al_am(loaded.model, tokens, 0.3)
    assert results["pruning"]["plan"]["layers"] == expected
    assert any(len(layer["heads"]) < 4 for layer in expected)  # the case is not trivial


def test_results_record_pruning_and_cache_reuse(make_cfg, tmp_path):
    args = ["model=tiny_llama_gqa", "method=flap", "calibration.nsamples=8",
            "calibration.seqlen=32", "benchmark=smoke", "logger=none",
            f"paths.cache_dir={tmp_path / 'cache'}"]
    first = pipeline.run(make_cfg(*args, "schedule.ratio=0.2", output_dir=tmp_path / "a"))
    second = pipeline.run(make_cfg(*args, "schedule.ratio=0.5", output_dir=tmp_path / "b"))
    assert first.pruning.details["calibration"]["cache_hit"] is False
    assert second.pruning.details["calibration"]["cache_hit"] is True
    for results in (first.to_dict(), second.to_dict()):
        pruning = results["pruning"]
        assert set(pruning["wall_time_s"]) >= {"calibration", "scoring", "surgery", "total"}
        assert set(pruning["peak_memory_bytes"]) >= {"calibration", "scoring", "surgery"}
        before = results["parameters"]["before"]["prunable"]
        unit = 2 * 96 * 16 + 2 * 96 * 16  # one query head + its KV head
        assert abs(pruning["ratio_achieved"] - pruning["ratio_asked"]) * before <= unit
        assert (tmp_path / ("a" if results is first else "b") / "kept_units.png").is_file()
    assert second.parameters.after.prunable < first.parameters.after.prunable
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert saved["layers"] != saved["layers_before"]


def test_ratio_out_of_range_is_rejected(make_cfg):
    from prunelab.config.schema import validate
    from prunelab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"ratio must be in \[0, 1\)"):
        validate(make_cfg("schedule.ratio=1.0"))


@pytest.mark.parametrize("layout", ["mha", "gqa", "gemma3"])
def test_streaming_statistics_equal_layerwise(layout):
    model = tiny_model(layout).double()
    tokens = torch.randint(0, 257, (7, 12), generator=torch.Generator().manual_seed(0))
    kinds = sorted(STATISTICS.names())
    layerwise = run_layerwise(adapter_for(model), tokens, kinds, 3, torch.device("cpu"))
    streaming = run_streaming(adapter_for(model), tokens, kinds, 3, torch.device("cpu"))
    for by_layer, by_stream in zip(layerwise, streaming):
        assert by_layer.keys() == by_stream.keys() == set(kinds)
        for kind in kinds:
            for field, value in by_layer[kind].items():
                torch.testing.assert_close(by_stream[kind][field], value, rtol=1e-10,
                                           atol=1e-12)


def test_engine_choices_are_checked(make_cfg):
    with pytest.raises(ConfigError, match="offload needs engine=layerwise"):
        validate(make_cfg("calibration.engine=streaming", "calibration.offload=true"))
    with pytest.raises(PrunelabError, match="engine=streaming cannot apply"):
        pipeline.run(make_cfg("model=tiny_llama", "method=wanda_sp", "benchmark=smoke",
                              "calibration.nsamples=4", "calibration.engine=streaming",
                              "logger=none"))
