"""Every pruning method runs end to end on tiny models and meets its budget.

The methods are read from the registry (one module of prunelab/methods each) and checked
against the YAML folder, so adding a method adds it here with nothing to edit.
"""

from __future__ import annotations

import pytest
import yaml

from prunelab import pipeline
from prunelab.config.schema import validate
from prunelab.errors import ConfigError, PrunelabError
from prunelab.registry import METHODS
from tests.conftest import CONF

UNIT_METHODS = sorted(n for n in METHODS.names() if METHODS.get(n).removes == "units")


def test_registry_and_yaml_folder_list_the_same_methods():
    yamls = {p.stem: yaml.safe_load(p.read_text()) for p in (CONF / "method").glob("*.yaml")}
    assert set(METHODS.names()) == set(yamls)
    for name, data in yamls.items():
        assert data["name"] == name
    assert {"dense", "flap", "bip", "interaction", "wanda_sp", "mag_sp", "random"} <= set(yamls)


def unit_cost(results) -> int:
    """Largest unit of a tiny model: one query head plus its KV head (q, k, v, o rows)."""
    layer = results["layers_before"][0]
    architecture = results["config"]["model"]["architecture"]
    d = architecture["hidden_size"]
    hd = architecture.get("head_dim") or d // architecture["num_attention_heads"]
    return 4 * d * hd if layer["num_kv_heads"] else 0


@pytest.mark.parametrize("method", UNIT_METHODS)
@pytest.mark.parametrize("model", ["tiny_llama", "tiny_llama_gqa", "tiny_gemma3"])
def test_method_meets_budget(make_cfg, tmp_path, method, model):
    cfg = make_cfg(f"model={model}", f"method={method}", "schedule.ratio=0.4",
                   "calibration.nsamples=8", "calibration.seqlen=32", "benchmark=smoke",
                   "benchmark.perplexity.wikitext2.max_windows=1", "~benchmark.perplexity.ptb",
                   "logger=none", f"paths.cache_dir={tmp_path / 'cache'}",
                   # llm_pruner's schedule protects 4 + 2 blocks; the tiny models have 3
                   "schedule.protect_first=0", "schedule.protect_last=0")
    results = pipeline.run(cfg).to_dict()
    pruning = results["pruning"]
    before = results["parameters"]["before"]["prunable"]
    assert pruning["ratio_asked"] == pytest.approx(0.4)
    assert abs(pruning["ratio_achieved"] - 0.4) * before <= unit_cost(results)
    assert results["parameters"]["after"]["total"] < results["parameters"]["before"]["total"]
    assert results["metrics"]["perplexity"]["wikitext2"]["ppl"] > 1


def test_wanda_sp_is_sequential_and_uniform(make_cfg, tmp_path):
    cfg = make_cfg("model=tiny_llama", "method=wanda_sp", "schedule.ratio=0.5",
                   "calibration.nsamples=8", "calibration.seqlen=32", "benchmark=smoke",
                   "logger=none")
    results = pipeline.run(cfg).to_dict()
    assert results["pruning"]["details"]["calibration"]["sequential"] is True
    assert results["pruning"]["details"]["bias_compensation"] is False
    for layer in results["layers"]:
        assert layer["num_heads"] == 2 and layer["intermediate_size"] in (48, 49)


def test_sequential_method_refuses_global_schedule(make_cfg, tmp_path):
    cfg = make_cfg("model=tiny_llama", "method=wanda_sp", "schedule=global",
                   "calibration.nsamples=4", "calibration.seqlen=16", "benchmark=smoke",
                   "logger=none")
    with pytest.raises(PrunelabError, match="schedule=uniform or schedule=explicit"):
        pipeline.run(cfg)


def test_unknown_flap_metric_is_rejected(make_cfg):
    with pytest.raises(ConfigError, match="'WIFW' is not one of IFV, WIFV, WIFN"):
        validate(make_cfg("method=flap", "method.metric=WIFW"))


def test_saved_pruned_model_reloads_with_same_perplexity(make_cfg, tmp_path):
    cfg = make_cfg("model=tiny_llama_gqa", "method=flap", "schedule.ratio=0.3",
                   "calibration.nsamples=8", "calibration.seqlen=32", "benchmark=smoke",
                   "logger=none", "save_model=true", f"paths.cache_dir={tmp_path / 'c'}",
                   output_dir=tmp_path / "job")
    results = pipeline.run(cfg).to_dict()
    cfg2 = make_cfg("model=local", f"model.path={tmp_path / 'job' / 'model'}", "method=dense",
                    "benchmark=smoke", "logger=none", "model.device=cpu",
                    output_dir=tmp_path / "reloaded")
    again = pipeline.run(cfg2).to_dict()
    for name in ("wikitext2", "ptb"):
        assert again["metrics"]["perplexity"][name]["ppl"] == pytest.approx(
            results["metrics"]["perplexity"][name]["ppl"], rel=1e-6)
    assert again["layers"] == results["layers"]
