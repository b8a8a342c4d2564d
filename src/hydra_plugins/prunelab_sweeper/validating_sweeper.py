"""Hydra's basic sweeper, plus a check of every sweep point before the first job starts.

Hydra composes each point only when its batch is launched, and prunelab validates a job only
when it runs, so a typo in the last point of a long sweep would surface hours later. This
sweeper composes and validates all points first (seconds) and stops the launch, naming each
bad point and its problem, unless ``hydra.sweeper.invalid_points=continue`` (then the bad
points fail when their turn comes, and the sweep ends with a non-zero exit code).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import open_dict

from prunelab.config.schema import validate
from prunelab.errors import PrunelabError

log = logging.getLogger(__name__)
#: Exit code of a sweep stopped before launch because some of its points are invalid.
INVALID_SWEEP_EXIT_CODE = 2


class ValidatingSweeper(BasicSweeper):
    """Cartesian-product sweeps (as Hydra's ``basic``), validated up front."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None,
                 invalid_points: Literal["stop", "continue"] = "stop"):
        super().__init__(max_batch_size=max_batch_size, params=params)
        if invalid_points not in ("stop", "continue"):
            raise PrunelabError(f"hydra.sweeper.invalid_points={invalid_points!r}: use stop "
                                "or continue.")
        self.invalid_points = invalid_points

    def sweep(self, arguments: list[str]) -> Any:
        """Validate every point, then launch the sweep as the basic sweeper does."""
        points = self._points(arguments)
        problems = self.problems(points)
        if problems:
            listing = "\n".join(f"point {i} ({' '.join(p) or 'no overrides'}):\n    {error}"
                                for i, p, error in problems)
            if self.invalid_points == "stop":
                log.error("%d of %d sweep point(s) are invalid; nothing was launched:\n%s\n"
                          "Fix them, or launch anyway with hydra.sweeper.invalid_points="
                          "continue.", len(problems), len(points), listing)
                raise SystemExit(INVALID_SWEEP_EXIT_CODE)
            log.warning("%d of %d sweep point(s) are invalid and will fail:\n%s",
                        len(problems), len(points), listing)
        return super().sweep(arguments)

    def _points(self, arguments: list[str]) -> list[list[str]]:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        return [point for batch in self.split_arguments(overrides, None) for point in batch]

    def problems(self, points: list[list[str]]) -> list[tuple[int, list[str], str]]:
        """(index, overrides, message) of every point that does not compose or validate."""
        found = []
        try:
            for index, point in enumerate(points):
                try:
                    config = self.hydra_context.config_loader.load_sweep_config(self.config,
                                                                                list(point))
                    with open_dict(config):  # the job folder is only known at launch
                        config.hydra.runtime.output_dir = str(Path(config.hydra.sweep.dir))
                    HydraConfig.instance().set_config(config)
                    validate(config)
                except Exception as err:  # composition (Hydra) or validation (prunelab) error
                    found.append((index, point, str(err).replace("\n", "\n    ")))
        finally:
            HydraConfig.instance().set_config(self.config)
        return found

