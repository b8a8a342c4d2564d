"""results.json is one typed record: written, read back equal, old versions converted."""

from __future__ import annotations

import json

import pytest

from prunelab import pipeline
from prunelab.errors import PrunelabError
from prunelab.record import RESULTS_FILE, SCHEMA_VERSION, ResultsRecord, read_record


@pytest.fixture
def job(make_cfg, tmp_path):
    out = tmp_path / "job"
    record = pipeline.run(make_cfg("model=tiny_llama", "method=flap", "benchmark=smoke",
                                   "+benchmark.speed.grid=[[1,16]]", "logger=none",
                                   "calibration.nsamples=4", "calibration.seqlen=16",
                                   output_dir=out))
    return record, out


def test_the_written_file_reads_back_as_the_same_record(job):
    record, out = job
    again = read_record(out)
    assert again == record and again.path == out / RESULTS_FILE
    data = json.loads((out / RESULTS_FILE).read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 5
    assert list(data)[:3] == ["schema_version", "complete", "job"]
    assert "path" not in data


def test_flat_metrics_walk_the_typed_fields(job):
    record, _ = job
    flat = record.flat_metrics()
    assert flat["ppl/wikitext2"] == record.metrics.perplexity["wikitext2"].ppl
    assert flat["speed/prefill_1x16/median_s"] == record.metrics.speed.prefill["1x16"].median_s
    assert flat["params/after_total"] == record.parameters.after.total


def test_version_1_is_converted(job):
    record, out = job
    data = record.to_dict()
    plan = data["pruning"]["plan"]
    plan["layers"][1] = {"heads": [], "channels": []}  # a block that executes nothing
    data["schema_version"] = 1
    del data["pruning"]["removed_blocks"]
    del data["recovery"]
    converted = ResultsRecord.from_dict(data)
    assert converted.schema_version == SCHEMA_VERSION
    assert converted.pruning.removed_blocks == [1]


def test_version_2_is_read_as_a_job_without_recovery(job):
    record, _ = job
    data = record.to_dict()
    del data["recovery"]
    data["schema_version"] = 2
    converted = ResultsRecord.from_dict(data)
    assert converted.recovery is None and converted.schema_version == SCHEMA_VERSION
    assert converted.metrics == record.metrics


def test_version_3_is_read_as_speed_without_a_reference(job):
    record, _ = job
    data = record.to_dict()
    for timing in data["metrics"]["speed"]["prefill"].values():
        del timing["reference"], timing["speedup"]
    data["schema_version"] = 3
    converted = ResultsRecord.from_dict(data)
    assert converted.schema_version == SCHEMA_VERSION
    assert converted.metrics.speed.prefill["1x16"].speedup is None
    assert converted.metrics == record.metrics


def test_version_4_is_read_as_a_job_without_memory_figures(job):
    record, _ = job
    data = record.to_dict()
    assert data["memory"]["measured_bytes"]["load"] > 0
    del data["memory"]
    data["schema_version"] = 4
    converted = ResultsRecord.from_dict(data)
    assert converted.memory is None and converted.schema_version == SCHEMA_VERSION
    assert converted.metrics == record.metrics


def test_an_unknown_version_names_it(job):
    record, out = job
    data = {**record.to_dict(), "schema_version": 7}
    (out / RESULTS_FILE).write_text(json.dumps(data))
    with pytest.raises(PrunelabError, match="schema version 7; this prunelab reads versions 1"):
        read_record(out)


def test_a_file_that_does_not_match_the_schema_names_the_field(job):
    record, out = job
    data = record.to_dict()
    data["pruning"]["ratio_askd"] = data["pruning"].pop("ratio_asked")
    with pytest.raises(PrunelabError, match="unknown key 'ratio_askd'.*ratio_asked"):
        ResultsRecord.from_dict(data)


def test_unfinished_files_are_not_results(tmp_path):
    assert read_record(tmp_path) is None
    (tmp_path / RESULTS_FILE).write_text('{"complete": false}')
    assert read_record(tmp_path) is None
    (tmp_path / RESULTS_FILE).write_text('{"schema_ver')
    assert read_record(tmp_path) is None
