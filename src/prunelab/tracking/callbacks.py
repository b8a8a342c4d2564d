"""Hydra callbacks: what happens when a whole sweep ends.

``SweepSummary`` (configured in conf/hydra/default.yaml) gathers the results.json files of
the sweep folder, writes the paper-layout table (table.md, table.csv, table.tex), the
metric-versus-ratio plot and, when speed was measured, the quality-versus-latency Pareto plot
beside them, and logs the table and plots to a W&B "summary" run in the sweep's group. A
sweep whose table cannot be built (no finished job, mixed protocols) logs why and keeps its
per-job results. A sweep in which any job failed (or was killed) ends by listing those jobs
with their errors and exits with code 1, so a script or a SLURM array learns of it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from prunelab.config.schema import LoggerConfig
from prunelab.config.typed import to_dataclass
from prunelab.errors import PrunelabError
from prunelab.tracking.plots import plot_metric_vs_ratio, plot_pareto
from prunelab.tracking.results import FAILURE_FILE
from prunelab.tracking.tables import (
    FailedJob,
    ResultTable,
    build_table,
    collect_failures,
    collect_results,
    write_table,
)
from prunelab.tracking.wandb_logger import WandbLogger

log = logging.getLogger(__name__)
#: Exit code of a sweep in which some job failed (its other jobs ran to the end).
FAILED_SWEEP_EXIT_CODE = 1


class SweepSummary(Callback):
    """Writes the sweep's table and plots when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failures = collect_failures(sweep_dir)
        try:
            self._summarise(config, sweep_dir, failures)
        except PrunelabError as err:
            log.error("No sweep table for %s: %s", sweep_dir, err)
        except Exception:  # a bug here must not hide which jobs failed
            log.exception("The sweep table for %s could not be written", sweep_dir)
        if failures:
            listing = "\n".join(f"  - {f.path.relative_to(sweep_dir)}: "
                                 + f.error.replace("\n", "\n      ") for f in failures)
            log.error("%d job(s) of the sweep failed (details in each folder's %s):\n%s",
                      len(failures), FAILURE_FILE, listing)
            raise SystemExit(FAILED_SWEEP_EXIT_CODE)

    def _summarise(self, config: DictConfig, sweep_dir: Path, failures: list[FailedJob]
                   ) -> None:
        results = collect_results([sweep_dir])
        table = build_table(results, failures)
        paths = write_table(table, sweep_dir)
        plot = plot_metric_vs_ratio(table, sweep_dir / "metrics_vs_ratio.png")
        pareto = plot_pareto(table, sweep_dir / "pareto.png")
        print(f"\nSweep table ({sweep_dir}):\n{table.to_markdown()}\n")
        log.info("Sweep table written to %s", ", ".join(str(p) for p in paths.values()))
        _log_to_wandb(config, sweep_dir, table, [plot, pareto], results[0].job.group)


def _log_to_wandb(config: DictConfig, sweep_dir: Path, table: ResultTable,
                  plots: list[Path | None], group: str | None) -> None:
    problems: list[str] = []
    logger_cfg = to_dataclass(LoggerConfig, OmegaConf.to_container(config.logger, resolve=True),
                              "logger", problems)
    if logger_cfg is None:
        log.warning("W&B summary skipped: %s", "; ".join(problems))
        return
    header, *rows = table.cells()
    logger = WandbLogger(logger_cfg, sweep_dir,
                         {"model": table.model, "columns": [c.key for c in table.columns]},
                         group=group or sweep_dir.name, job_type="summary", name="summary")
    try:
        logger.log_table("sweep_table", header, rows)
        for plot in plots:
            if plot is not None:
                logger.log_image(plot.stem, plot)
    finally:
        logger.finish()
