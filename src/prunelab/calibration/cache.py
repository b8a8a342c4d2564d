"""On-disk cache of calibration statistics (safetensors + JSON key, no pickles).

The key is (model identity, calibration config, statistic kinds, dtype), so a sweep over
ratios or schedules calibrates once. Files are written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from prunelab.calibration.runner import LayerStats

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # 2: moments summed about a shift, float32 partial sums


def cache_key(identity: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able description."""
    blob = json.dumps({"version": CACHE_VERSION, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class StatisticsCache:
    """Statistics of every block, stored as ``<cache_dir>/statistics/<key>.safetensors``."""

    def __init__(self, cache_dir: str | os.PathLike, identity: dict[str, Any]):
        self.identity = identity
        self.key = cache_key(identity)
        self.path = Path(cache_dir) / "statistics" / f"{self.key}.safetensors"

    def load(self) -> list[LayerStats] | None:
        """Cached statistics, or None when absent."""
        if not self.path.is_file():
            return None
        flat = load_file(str(self.path))
        layers: dict[int, LayerStats] = {}
        for name, tensor in flat.items():
            index, kind, field = name.split("/")
            layers.setdefault(int(index), {}).setdefault(kind, {})[field] = tensor
        log.info("Calibration statistics loaded from cache %s", self.path)
        return [layers[i] for i in range(len(layers))]

    def save(self, stats: list[LayerStats]) -> None:
        """Write atomically."""
        flat = {f"{i}/{kind}/{field}": tensor.contiguous()
                for i, layer in enumerate(stats) for kind, fields in layer.items()
                for field, tensor in fields.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".stats-", dir=self.path.parent)
        os.close(fd)
        try:
            save_file(flat, tmp, metadata={"identity": json.dumps(self.identity, default=str)})
            os.replace(tmp, self.path)
        finally:
            Path(tmp).unlink(missing_ok=True)
