"""prunelab entrypoint: ``python run.py [group=option ...] [key=value ...]`` (``-m`` sweeps)."""

import hydra
from omegaconf import DictConfig

from prunelab.cli import configure_logging, objective_value, run_job


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hand the composed config to the pipeline; return ``objective`` to a sweeper."""
    configure_logging()
    return objective_value(cfg, run_job(cfg))


if __name__ == "__main__":
    main()
