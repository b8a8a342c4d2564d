"""Compose a job's config outside ``run.py`` (scripts, notebooks, tests), as Hydra would.

Hydra's runtime fields (``hydra.runtime.cwd``, ``output_dir``) are set too, because the
configs resolve paths through them.
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

#: The checkout's ``conf/`` folder (prunelab is installed in editable mode by setup).
CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def compose_job(overrides: list[str], output_dir: str | Path) -> DictConfig:
    """``conf/config.yaml`` with ``overrides``, writing into ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(CONF_DIR.parent)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg
