"""Shared fixtures: offline environment, composed configs, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from prunelab.config.compose import compose_job

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"

# No network in tests: every loader must take its offline path.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
if "PRUNELAB_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["PRUNELAB_DATA_DIR"] = str(SHARED_DATA)


def compose_config(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """Compose conf/config.yaml like run.py would, with Hydra's runtime fields set."""
    return compose_job(overrides, output_dir or ROOT / "outputs" / "test")


@pytest.fixture
def make_cfg(tmp_path):
    """Factory: compose with overrides, outputs in a fresh temporary folder."""

    def factory(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        return compose_config(list(overrides), output_dir or tmp_path / "job")

    yield factory
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def data_dir() -> str:
    path = os.environ.get("PRUNELAB_DATA_DIR")
    if not path or not Path(path).is_dir():
        pytest.fail("PRUNELAB_DATA_DIR is not set to the shared data folder (see README).")
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model (converted once into the prunelab cache), on the CPU."""
    from prunelab.config.schema import validate
    from prunelab.models.loading import load_model

    run = validate(compose_config(["model=smollm2_135m", "model.device=cpu"]))
    GlobalHydra.instance().clear()
    return load_model(run.model, run.paths.cache_dir)
