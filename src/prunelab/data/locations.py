"""Where datasets are looked for: the data folder, installed packages, then the hub."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from prunelab.errors import DataMissingError

DATA_DIR_ENV = "PRUNELAB_DATA_DIR"


def data_dirs(configured: str | os.PathLike | None) -> list[Path]:
    """Data folders to search, most specific first: ``$PRUNELAB_DATA_DIR``, then the config's."""
    dirs: list[Path] = []
    for candidate in (os.environ.get(DATA_DIR_ENV), configured):
        if candidate:
            path = Path(candidate).expanduser().resolve()
            if path not in dirs:
                dirs.append(path)
    return dirs


@dataclass
class SearchLog:
    """Records every place a loader looked, so a miss can name them all."""

    dataset: str
    looked: list[str] = field(default_factory=list)

    def first_existing(self, folders: list[Path], names: list[str]) -> Path | None:
        """Return the first ``folder/name`` that exists, logging each candidate."""
        for folder in folders:
            for name in names:
                path = folder / name
                self.looked.append(str(path))
                if path.is_file():
                    return path
        return None

    def missing(self, how_to_provide: str) -> DataMissingError:
        """The error raised when nothing was found."""
        where = "\n".join(f"    {p}" for p in self.looked) or "    (no data folder configured)"
        return DataMissingError(
            f"Dataset {self.dataset!r} is not available. Looked in:\n{where}\n"
            f"  To provide it: {how_to_provide}"
        )
