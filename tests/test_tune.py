"""Tuning "how much to prune" with Optuna: the objective, its refusals, and a real study."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import yaml

from prunelab.cli import objective_value
from prunelab.config.schema import validate
from prunelab.errors import ConfigError
from tests.helpers.processes import ROOT, run_py


def test_objective_on_a_test_split_is_refused(make_cfg):
    with pytest.raises(ConfigError, match="wikitext2 test split: tuning on it"):
        validate(make_cfg("benchmark=smoke", "objective=ppl/wikitext2"))


def test_objective_must_name_a_perplexity_of_the_benchmark(make_cfg):
    with pytest.raises(ConfigError, match=r"it has: ppl/wikitext2, ppl/ptb"):
        validate(make_cfg("benchmark=smoke", "objective=ppl/c4_tune"))
    with pytest.raises(ConfigError, match="is not a perplexity"):
        validate(make_cfg("benchmark=tune_validation", "objective=zero_shot/average"))


def test_tune_experiment_validates(make_cfg):
    run = validate(make_cfg("experiment=tune_dynamic", "model=tiny_llama"))
    assert run.objective == "ppl/c4_tune"
    assert run.benchmark.perplexity["c4_tune"].split == "train"
    assert run.method.name == "interaction" and run.schedule.params.target == "latency"


def test_no_objective_returns_nothing_and_a_failed_trial_nan(make_cfg):
    assert objective_value(make_cfg(), None) is None
    assert math.isnan(objective_value(make_cfg("benchmark=tune_validation",
                                               "objective=ppl/c4_tune"), None))


def test_optuna_study_minimises_the_validation_ppl_and_its_best_trial_is_evaluated(tmp_path):
    sweep = tmp_path / "study"
    proc = run_py("-m", "experiment=tune_dynamic", "model=tiny_llama", "schedule.target=params",
                  "calibration.nsamples=8", "calibration.seqlen=32",
                  "benchmark.perplexity.c4_tune.max_windows=4", "hydra.sweeper.n_trials=3",
                  "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={sweep}",
                  timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert len(trials) == 3
    values = [t["metrics"]["perplexity"]["c4_tune"]["ppl"] for t in trials]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(values))
    assert set(best["best_params"]) == {"schedule.temperature", "schedule.threshold",
                                        "method.estimator"}

    out = tmp_path / "best"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_best_trial.py"),
                           str(sweep), "--benchmark", "smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "results.json").read_text())
    assert set(record["metrics"]["perplexity"]) == {"wikitext2", "ptb"}
    schedule = record["config"]["schedule"]
    assert schedule["temperature"] == pytest.approx(best["best_params"]["schedule.temperature"])
    assert record["config"]["method"]["estimator"] == best["best_params"]["method.estimator"]


def test_evaluating_without_a_study_says_what_to_run(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_best_trial.py"),
                           str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1 and "holds no finished Optuna study" in proc.stderr

