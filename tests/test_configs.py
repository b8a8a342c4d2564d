"""Every option of every config group composes and validates; bad configs fail at once."""

from __future__ import annotations

import pytest
from hydra.errors import MissingConfigException

from prunelab.config.schema import validate
from prunelab.errors import ConfigError
from tests.conftest import CONF

GROUPS = ["model", "method", "schedule", "benchmark", "calibration", "logger"]
NEEDS = {"local": ["model.path=/some/where"], "gguf": ["model.path=/x.gguf"],
         "explicit": ["schedule.ratios=[0.1,0.2]"]}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(make_cfg, group, option):
    overrides = [f"{group}={option}", *NEEDS.get(option, [])]
    run = validate(make_cfg(*overrides))
    assert getattr(run, group).name  # each option names itself


def test_defaults_are_the_documented_job(make_cfg):
    run = validate(make_cfg())
    assert (run.model.name, run.method.name, run.benchmark.name, run.logger.name) == (
        "smollm2_135m", "flap", "default", "wandb")
    assert (run.schedule.name, run.schedule.params.ratio) == ("global", 0.2)
    assert run.logger.mode == "offline"


def test_unknown_group_option_lists_available(make_cfg):
    with pytest.raises(MissingConfigException) as err:
        make_cfg("model=smollm3")
    assert "smollm2_135m" in str(err.value) and "tiny_llama" in str(err.value)


def test_unknown_key_suggests_the_right_one(make_cfg):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg("+benchmark.batch_sise=4"))
    message = str(err.value)
    assert "unknown key 'batch_sise'" in message and "Did you mean: 'batch_size'" in message


def test_unknown_method_name_suggests(make_cfg):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg("method.name=dens"))
    assert "Unknown method 'dens'. Did you mean: 'dense'" in str(err.value)


def test_all_problems_reported_together(make_cfg):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg("model.dtype=float33", "benchmark.batch_size=0", "+seeed=1"))
    assert len(err.value.problems) == 3


def test_wrong_types_rejected(make_cfg):
    with pytest.raises(ConfigError, match="expected int"):
        validate(make_cfg("benchmark.perplexity.wikitext2.seqlen=long"))


def test_missing_required_model_path(make_cfg):
    with pytest.raises(ConfigError, match="model.path is required"):
        validate(make_cfg("model=local"))


def test_hydra_settings(make_cfg):
    cfg = make_cfg()
    assert cfg.hydra.job.chdir is False
    assert "/outputs/runs/" in cfg.hydra.run.dir and "/outputs/multiruns/" in cfg.hydra.sweep.dir
