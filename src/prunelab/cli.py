"""What run.py does around the pipeline: logging set-up and user-facing error handling.

A user error (bad config, missing data) ends a single run with one clear message instead of a
traceback. Inside a multirun any failed job is logged (a bug with its traceback) and the
sweep goes on with its other jobs; the failed job leaves ``failure.json`` in its folder and the
sweep's summary (tracking/callbacks.py) lists it and ends with a non-zero exit code.
"""

from __future__ import annotations

import logging
import sys
import warnings

from omegaconf import DictConfig

from prunelab import pipeline
from prunelab.errors import PrunelabError
from prunelab.record import ResultsRecord

log = logging.getLogger("prunelab")


def configure_logging() -> None:
    """INFO for prunelab, quiet third-party chatter that hides the progress bars."""
    logging.getLogger("prunelab").setLevel(logging.INFO)
    for noisy in ("transformers", "datasets", "huggingface_hub", "wandb"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # keeps its truncation warnings
    warnings.filterwarnings("ignore", module="transformers")


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().mode.name == "MULTIRUN"
    except ValueError:
        return False


def objective_value(cfg: DictConfig, record: ResultsRecord | None) -> float | None:
    """The metric ``cfg.objective`` names, for a sweeper to minimise (NaN: a failed trial)."""
    name = cfg.get("objective")
    if name is None:
        return None
    if record is None:
        return float("nan")
    return float(record.flat_metrics()[name])


def run_job(cfg: DictConfig) -> ResultsRecord | None:
    """Run one job; turn user errors into a message (and exit code 1 outside sweeps)."""
    try:
        return pipeline.run(cfg)
    except PrunelabError as err:
        log.error("%s", err)
        if _in_multirun():
            return None
        sys.exit(1)
    except Exception:
        if not _in_multirun():
            raise
        log.exception("The job failed; the sweep goes on with its other jobs")
        return None
