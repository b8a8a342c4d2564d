"""Weights & Biases logging that never fails a job.

Offline by default (runs land in the job folder and can be synced later with
``wandb sync``); one W&B run per Hydra job, grouped by sweep. In online mode a server that
does not answer within ``logger.init_timeout`` seconds costs the job that long once: the run
is then logged offline in the job folder and the log says how to upload it. Any other W&B
error is reported as a warning and logging stops, because results.json, not W&B, is the
record of a run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from prunelab.config.schema import LoggerConfig
from prunelab.record import ResultsRecord

log = logging.getLogger(__name__)


class WandbLogger:
    """Thin wrapper over ``wandb`` with the prunelab run conventions."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: dict[str, Any],
                 group: str, job_type: str, name: str):
        self.run = None
        self.mode: str | None = None
        self._fell_back = False
        if cfg.name == "none" or cfg.mode == "disabled":
            return
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            # W&B's own telemetry probes the server at exit with 10 s timeouts, which an
            # unreachable server turns into 10-20 s of waiting; set it to true to keep it
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
            kwargs = dict(project=cfg.project, entity=cfg.entity, dir=str(run_dir),
                          config=config, group=group, job_type=job_type, name=name,
                          tags=cfg.tags, reinit="finish_previous",
                          settings=wandb.Settings(init_timeout=cfg.init_timeout))
            try:
                self.run = wandb.init(mode=cfg.mode, **kwargs)
            except Exception as err:
                if cfg.mode != "online":
                    raise
                log.warning("W&B online run could not start (%s: %s); logging this job "
                            "offline instead", type(err).__name__, str(err).splitlines()[0])
                self.run = wandb.init(mode="offline", **kwargs)
                self._fell_back = True
            self.mode = "offline" if self._fell_back else cfg.mode
        except Exception as err:  # W&B must never fail a job
            log.warning("W&B disabled for this job: %s: %s", type(err).__name__, err)
            self.run = None

    def log_results(self, record: ResultsRecord) -> None:
        """Log the record's flat metrics to the summary and the metric table."""
        if self.run is None:
            return
        try:
            import wandb

            flat_metrics = record.flat_metrics()
            self.run.log(flat_metrics)
            self.run.summary.update(flat_metrics)
            table = wandb.Table(columns=["metric", "value"],
                                data=[[k, v] for k, v in flat_metrics.items()])
            self.run.log({"results_table": table})
        except Exception as err:
            log.warning("W&B logging failed: %s: %s", type(err).__name__, err)

    def log_step(self, metrics: dict[str, float]) -> None:
        """Log one training step's values (recovery's loss curve)."""
        if self.run is None:
            return
        try:
            self.run.log(metrics)
        except Exception as err:
            log.warning("W&B logging failed: %s: %s", type(err).__name__, err)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Log a table (e.g. a sweep's paper table) as a ``wandb.Table``."""
        if self.run is None:
            return
        try:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)})
        except Exception as err:
            log.warning("W&B table logging failed: %s: %s", type(err).__name__, err)

    def log_image(self, key: str, path: Path) -> None:
        """Log a PNG saved in the run folder."""
        if self.run is None:
            return
        try:
            import wandb

            self.run.log({key: wandb.Image(str(path))})
        except Exception as err:
            log.warning("W&B image logging failed: %s: %s", type(err).__name__, err)

    @property
    def run_dir(self) -> str | None:
        """Folder of the W&B run files (offline runs), for the record."""
        return getattr(self.run, "dir", None) if self.run is not None else None

    def finish(self, failed: bool = False) -> None:
        """Close the run (exit code 1 marks it failed in W&B)."""
        if self.run is None:
            return
        sync_dir = Path(self.run.dir).parent if self._fell_back else None
        try:
            self.run.finish(exit_code=1 if failed else 0)
        except Exception as err:
            log.warning("W&B finish failed: %s: %s", type(err).__name__, err)
        self.run = None
        if sync_dir is not None:
            log.warning("The W&B run was kept offline in %s; upload it with: wandb sync %s",
                        sync_dir, sync_dir)
