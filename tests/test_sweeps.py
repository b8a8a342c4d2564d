"""Sweeps as users launch them: experiments expand, resume, reuse, launchers, tables."""

from __future__ import annotations

import json
import shutil

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException

from prunelab.config.schema import validate
from prunelab.errors import PrunelabError
from prunelab.tracking.plots import pareto_front, plot_metric_vs_ratio, plot_pareto
from prunelab.tracking.tables import (
    MISSING,
    ResultTable,
    Row,
    build_table,
    collect_results,
    columns_of,
    values_of,
)
from tests.conftest import CONF, compose_config
from tests.helpers.processes import run_py
from tests.helpers.records import record

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
#: experiment -> (number of sweep points, {field: values every job set covers})
EXPECTED = {
    "flap_table2": (24, {"method": {"dense", "flap", "wanda_sp", "llm_pruner"},
                         "ratio": {0.2, 0.3, 0.5}, "recovery": {"none", "lora"}}),
    "recovery_table": (30, {"method": {"dense", "flap", "wanda_sp", "llm_pruner", "interaction"},
                            "ratio": {0.2, 0.5}, "recovery": {"none", "lora", "distill"}}),
    "flap_zeroshot": (6, {"method": {"dense", "flap", "wanda_sp"}, "ratio": {0.2, 0.5}}),
    "bip_vs_baselines": (15, {"method": {"dense", "bip", "flap", "wanda_sp", "mag_sp"},
                              "ratio": {0.2, 0.3, 0.5}}),
    "bip_ablation": (24, {"method": {"bip"}, "ratio": {0.3, 0.5},
                          "lipschitz": {"bound", "empirical", "none"},
                          "schedule": {"block", "global"}, "bias_compensation": {True, False}}),
    "flap_ablation": (12, {"method": {"flap"}, "ratio": {0.2},
                           "metric": {"IFV", "WIFV", "WIFN"}, "schedule": {"uniform", "global"},
                           "bias_compensation": {True, False}}),
    "interaction_pareto": (60, {"method": {"dense", "interaction", "flap", "bip", "wanda_sp"},
                                "ratio": {0.1, 0.2, 0.3, 0.5},
                                "target": {"params", "latency", "latency_decode"}}),
    "interaction_ablation": (12, {"method": {"interaction"}, "ratio": {0.5},
                                  "estimator": {"entropy", "kl", "cosine"},
                                  "interactions": {True, False},
                                  "whole_modules": {True, False}}),
    "interaction_paper": (6, {"method": {"dense", "interaction"}, "ratio": {0.2, 0.3, 0.5},
                              "calibration": {(128, 2048)}}),
    "model_orderings": (12, {"method": {"dense", "flap", "wanda_sp", "mag_sp", "bip",
                                        "interaction"}, "ratio": {0.2, 0.5}}),
}


def sweep_jobs(experiment: str, *extra: str) -> list[list[str]]:
    """The override lists Hydra's basic sweeper makes of an experiment's sweep parameters."""
    cfg = compose_config([f"experiment={experiment}", *extra])
    params = cfg.hydra.sweeper.params or {}
    overrides = OverridesParser.create().parse_overrides(
        [f"{key}={value}" for key, value in params.items()])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


#: experiments swept by Optuna (tests/test_tune.py runs one), not by the basic sweeper
OPTUNA_STUDIES = {"tune_dynamic"}


def test_every_experiment_is_covered():
    assert set(EXPERIMENTS) == set(EXPECTED) | OPTUNA_STUDIES


@pytest.mark.parametrize("experiment", sorted(EXPECTED))
def test_experiment_expands_to_its_jobs(experiment):
    count, covers = EXPECTED[experiment]
    jobs = sweep_jobs(experiment, "model=smollm2_135m")
    assert len(jobs) == count
    seen: dict[str, set] = {key: set() for key in covers}
    for job in jobs:
        run = validate(compose_config([f"experiment={experiment}", "model=smollm2_135m", *job]))
        assert run.model.name == "smollm2_135m" and run.experiment_name == experiment
        values = {"method": run.method.name, "ratio": run.schedule.params.ratio,
                  "schedule": run.schedule.name,
                  "metric": getattr(run.method.params, "metric", None),
                  "lipschitz": getattr(run.method.params, "lipschitz", None),
                  "bias_compensation": getattr(run.method.params, "bias_compensation", None),
                  "target": run.schedule.params.target,
                  "estimator": getattr(run.method.params, "estimator", None),
                  "interactions": getattr(run.method.params, "interactions", None),
                  "whole_modules": getattr(run.schedule.params, "whole_modules", None),
                  "calibration": (run.calibration.nsamples, run.calibration.seqlen),
                  "recovery": run.recovery.name}
        for key in covers:
            seen[key].add(values[key])
    assert seen == covers


def test_flap_table2_uses_each_methods_own_calibration():
    base = ["experiment=flap_table2", "model=smollm2_135m"]
    flap = validate(compose_config([*base, "method=flap"]))
    wanda = validate(compose_config([*base, "method=wanda_sp"]))
    assert (flap.calibration.dataset, flap.calibration.nsamples) == ("wikitext2", 1024)
    assert (wanda.calibration.dataset, wanda.calibration.nsamples) == ("c4", 128)
    assert flap.benchmark.name == "flap_table2"


def test_unknown_experiment_lists_the_experiments():
    with pytest.raises(MissingConfigException) as err:
        compose_config(["experiment=flap_table3"])
    assert all(name in str(err.value) for name in EXPERIMENTS)


SWEEP = ("-m", "model=tiny_llama", "benchmark=smoke", "method=dense,mag_sp",
         "schedule.ratio=0.2,0.5")


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """A finished four-point sweep (dense and mag_sp at two ratios) on a tiny model."""
    sweep = tmp_path_factory.mktemp("sweeps") / "sweep"
    proc = run_py(*SWEEP, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


def job_dir(sweep, method, ratio):
    [folder] = [p for p in sweep.iterdir() if f"method={method}" in p.name
                and f"schedule.ratio={ratio}" in p.name]
    return folder


def test_sweep_ends_with_table_plot_and_wandb_summary(tiny_sweep):
    for name in ("table.md", "table.csv", "table.tex", "metrics_vs_ratio.png"):
        assert (tiny_sweep / name).is_file()
    lines = (tiny_sweep / "table.md").read_text().splitlines()
    assert lines[0] == "| Method | Ratio | Params | WikiText2 | PTB |"
    assert [line.split(" | ")[0:2] for line in lines[2:]] == [
        ["| dense", "0%"], ["| mag_sp", "20%"], ["| mag_sp", "50%"]]
    assert len(list(tiny_sweep.glob("wandb/offline-run-*"))) == 1  # the summary run
    assert list(tiny_sweep.glob("wandb/offline-run-*/files/media/table/sweep_table*"))
    assert list(tiny_sweep.glob("wandb/offline-run-*/files/media/images/metrics_vs_ratio*"))
    groups = {json.loads(p.read_text())["job"]["group"] for p in tiny_sweep.glob("*/results.json")}
    assert groups == {"default/sweep"}


def test_dense_runs_once_per_sweep(tiny_sweep):
    first = json.loads((job_dir(tiny_sweep, "dense", 0.2) / "results.json").read_text())
    second = json.loads((job_dir(tiny_sweep, "dense", 0.5) / "results.json").read_text())
    assert second["job"]["reused_from"] == str(job_dir(tiny_sweep, "dense", 0.2))
    assert second["metrics"] == first["metrics"]
    assert second["config"]["schedule"]["ratio"] == 0.5
    assert not list(job_dir(tiny_sweep, "dense", 0.5).glob("wandb/offline-run-*"))


def test_relaunch_finishes_only_missing_jobs(tiny_sweep, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(tiny_sweep, sweep)
    done = job_dir(sweep, "mag_sp", 0.2) / "results.json"
    lost = job_dir(sweep, "mag_sp", 0.5) / "results.json"
    def ppl(path):
        metrics = json.loads(path.read_text())["metrics"]["perplexity"]
        return {name: metric["ppl"] for name, metric in metrics.items()}

    expected = ppl(lost)
    stamp = done.stat().st_mtime_ns
    lost.unlink()
    proc = run_py(*SWEEP, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert done.stat().st_mtime_ns == stamp
    assert ppl(lost) == expected
    log = proc.stdout + proc.stderr
    assert log.count("Skipping:") == 3


def test_table_shows_missing_cells_as_missing(tiny_sweep, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(tiny_sweep, sweep)
    (job_dir(sweep, "mag_sp", 0.5) / "results.json").unlink()
    table = build_table(collect_results([sweep]))
    row = table.rows[-1]
    assert (row.method, row.ratio, row.values) == ("mag_sp", 0.5, {})
    last = table.to_markdown().splitlines()[-1]
    assert last == f"| mag_sp | 50% | {MISSING} | {MISSING} | {MISSING} |"
    assert table.to_csv().splitlines()[-1] == "mag_sp,,,0.5,,,,"  # no failure either


def test_table_refuses_mixed_protocols(tiny_sweep, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(tiny_sweep, sweep)
    path = job_dir(sweep, "mag_sp", 0.5) / "results.json"
    results = json.loads(path.read_text())
    results["config"]["benchmark"]["perplexity"]["ptb"]["seqlen"] = 64
    path.write_text(json.dumps(results))
    with pytest.raises(PrunelabError, match=r"benchmark.perplexity.ptb.seqlen: 128 vs 64"):
        build_table(collect_results([sweep]))


def test_table_of_empty_folder_is_an_error(tmp_path):
    with pytest.raises(PrunelabError, match="No complete results.json"):
        collect_results([tmp_path])
    with pytest.raises(PrunelabError, match="does not exist"):
        collect_results([tmp_path / "nowhere"])


def test_make_table_script(tiny_sweep, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_table.py"),
                           str(tiny_sweep), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "table.md").read_text() == (tiny_sweep / "table.md").read_text()
    empty = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_table.py"),
                            str(tmp_path / "empty_does_not_exist")],
                           capture_output=True, text=True, timeout=120)
    assert empty.returncode == 1 and "does not exist" in empty.stderr


@pytest.mark.parametrize("launcher", [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                                      ["hydra/launcher=submitit_local",
                                       "hydra.launcher.timeout_min=10"]])
def test_launchers_run_a_two_job_sweep(launcher, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_py("-m", "model=tiny_llama", "benchmark=smoke", "method=dense",
                  "schedule.ratio=0.2", "seed=0,1", "logger=none", *launcher,
                  f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert [r["config"]["seed"] for r in results] == [0, 1]
    assert (sweep / "table.md").is_file()


def test_explicit_schedule_rows_show_the_fraction_asked(make_cfg, tmp_path):
    from prunelab import pipeline

    common = ["model=tiny_llama", "benchmark=smoke", "logger=none"]
    results = []
    for name, extra in (("dense", ["method=dense", "schedule=explicit",
                                   "schedule.ratios=[0.1,0.5,0.3]"]),
                        ("explicit", ["method=mag_sp", "schedule=explicit",
                                      "schedule.ratios=[0.1,0.5,0.3]"])):
        results.append(pipeline.run(make_cfg(*common, *extra, output_dir=tmp_path / name)))
    table = build_table(results)
    asked = round(results[1].pruning.ratio_asked, 4)
    assert asked == pytest.approx(0.3, abs=0.01)
    assert [(row.method, row.ratio) for row in table.rows] == [("dense", 0.0), ("mag_sp", asked)]


def test_pareto_front_by_hand():
    points = [(1.0, 50.0), (2.0, 40.0), (2.5, 45.0), (3.0, 30.0), (0.5, 80.0)]
    assert pareto_front(points, lower_is_better=True) == [(0.5, 80.0), (1.0, 50.0),
                                                          (2.0, 40.0), (3.0, 30.0)]
    assert pareto_front(points, lower_is_better=False) == [(0.5, 80.0)]


def test_speed_columns_and_pareto_plot(tmp_path):
    rows = [record("dense", 0.0, 10.0, 600.0, 30.0), record("flap", 0.5, 30.0, 350.0, 40.0),
            record("interaction", 0.5, 25.0, 300.0, 45.0)]
    columns = columns_of(rows[0])
    assert [(c.key, c.kind) for c in columns] == [
        ("ppl/wikitext2", "ppl"), ("speed/prefill/1x512", "latency"),
        ("speed/decode", "throughput")]
    assert values_of(rows[2]) == pytest.approx({"ppl/wikitext2": 25.0,
                                                "speed/prefill/1x512": 300.0,
                                                "speed/decode": 45.0})
    table = ResultTable("tiny", columns, [Row(r.method.name, r.ratio, values=values_of(r))
                                          for r in rows], {})
    assert plot_pareto(table, tmp_path / "pareto.png").is_file()
    without_speed = ResultTable("tiny", columns[:1], table.rows, {})
    assert plot_pareto(without_speed, tmp_path / "none.png") is None


def test_speedups_show_with_their_intervals_in_tables_and_the_pareto_plot(tmp_path):
    rows = [record("dense", 0.0, 10.0, 600.0, speedup=()),
            record("flap", 0.5, 30.0, 350.0, speedup=(1.71, 1.6, 1.8)),
            record("interaction", 0.5, 25.0, 300.0, speedup=(2.0, 1.9, 2.1))]
    columns = columns_of(rows[0])  # the dense job: the columns come from its protocol
    assert [(c.key, c.kind) for c in columns][-1] == ("speedup/prefill_1x512", "speedup")
    assert values_of(rows[1])["speedup/prefill_1x512/low"] == 1.6
    table = ResultTable("tiny", columns, [Row(r.method.name, r.ratio, values=values_of(r))
                                          for r in rows], {})
    header, dense, flap, _ = table.cells()
    assert header[-1] == "Speed-up prefill 1x512 (95% CI)"
    assert dense[-1] == MISSING and flap[-1] == "1.71x (1.60-1.80)"
    csv_header = table.to_csv().splitlines()[0].split(",")
    assert csv_header[-4:] == ["speedup/prefill_1x512", "speedup/prefill_1x512/low",
                               "speedup/prefill_1x512/high", "failed"]
    assert plot_pareto(table, tmp_path / "pareto.png").is_file()
    assert plot_metric_vs_ratio(table, tmp_path / "metrics.png").is_file()
