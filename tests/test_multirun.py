"""run.py as a user calls it: a two-job sweep writes two results.json and two W&B runs."""

from __future__ import annotations

import json

from tests.helpers.processes import run_py


def test_two_model_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_py("-m", "benchmark=smoke", "model=tiny_llama,tiny_llama_gqa",
                  f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted(sweep.glob("*/results.json"))
    assert len(results) == 2
    models = {json.loads(p.read_text())["model"]["name"] for p in results}
    assert models == {"tiny_llama", "tiny_llama_gqa"}
    groups = {json.loads(p.read_text())["job"]["group"] for p in results}
    assert groups == {"default/sweep"}
    assert len(list(sweep.glob("*/wandb/offline-run-*"))) == 2


def test_user_error_is_one_message_and_exit_code(tmp_path):
    proc = run_py("model=tiny_llama", "benchmark=smoke", "+benchmark.batch_sise=2",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1
    assert "Did you mean: 'batch_size'" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_sweep_without_a_folder_goes_under_the_launch_folder(tmp_path):
    proc = run_py("-m", "model=tiny_llama", "benchmark=smoke", "method=dense", "logger=none",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [results] = list((tmp_path / "outputs" / "multiruns").glob("*/*/*/results.json"))
    assert results.parent.name == "benchmark=smoke,method=dense,model=tiny_llama"
    assert list((tmp_path / "outputs" / "multiruns").glob("*/*/table.md"))
