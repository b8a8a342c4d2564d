"""On-disk cache of calibration statistics (safetensors + JSON key, no pickles).

The key is (model identity by content, calibration config, statistic kinds), so a sweep over
ratios or schedules calibrates once and two installs of one model share it. An entry carries
the SHA-256 of its tensors: a damaged entry is detected, reported and recomputed, never used.
Entries are written under a temporary name and renamed, and computed under a file lock, so two
jobs asking for the same entry at once compute it once: the second waits and reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from safetensors import safe_open
from safetensors.torch import save_file

from prunelab.atomic import atomic_file
from prunelab.calibration.runner import LayerStats

log = logging.getLogger(__name__)
CACHE_VERSION = 3  # 3: content identity of the model, checksum in every entry


def cache_key(identity: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able description."""
    blob = json.dumps({"version": CACHE_VERSION, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tensors_digest(flat: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``flat``'s tensors."""
    digest = hashlib.sha256()
    for name in sorted(flat):
        tensor = flat[name].detach().contiguous().cpu()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class StatisticsCache:
    """Statistics of every block, stored as ``<cache_dir>/statistics/<key>.safetensors``."""

    def __init__(self, cache_dir: str | os.PathLike, identity: dict[str, Any]):
        self.identity = identity
        self.key = cache_key(identity)
        self.path = Path(cache_dir) / "statistics" / f"{self.key}.safetensors"

    @contextmanager
    def computing(self) -> Iterator[None]:
        """Hold the entry's lock: a concurrent job computing the same entry is waited for."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path.with_suffix(".lock")))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("Another job is computing cache entry %s; waiting to reuse it", self.key)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def load(self) -> list[LayerStats] | None:
        """Cached statistics, or None when absent or damaged (a damaged entry is removed)."""
        if not self.path.is_file():
            return None
        try:
            with safe_open(str(self.path), framework="pt") as entry:
                expected = (entry.metadata() or {}).get("checksum")
                flat = {name: entry.get_tensor(name) for name in entry.keys()}
            problem = None if expected == tensors_digest(flat) else "checksum mismatch"
        except Exception as err:  # safetensors raises its own Rust-side error type
            problem = f"{type(err).__name__}: {err}"
        if problem is not None:
            log.warning("Cache entry %s is damaged (%s): ignoring it and computing it again",
                        self.path, problem)
            self.path.unlink(missing_ok=True)
            return None
        layers: dict[int, LayerStats] = {}
        for name, tensor in flat.items():
            index, kind, field = name.split("/")
            layers.setdefault(int(index), {}).setdefault(kind, {})[field] = tensor
        log.info("Calibration statistics loaded from cache %s", self.path)
        return [layers[i] for i in range(len(layers))]

    def save(self, stats: list[LayerStats]) -> None:
        """Write atomically, with the tensors' checksum in the header."""
        flat = {f"{i}/{kind}/{field}": tensor.contiguous()
                for i, layer in enumerate(stats) for kind, fields in layer.items()
                for field, tensor in fields.items()}
        metadata = {"identity": json.dumps(self.identity, default=str),
                    "checksum": tensors_digest(flat)}
        with atomic_file(self.path) as tmp:
            save_file(flat, str(tmp), metadata=metadata)
