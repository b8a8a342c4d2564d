"""A model's identity by content: the SHA-256 of the files its weights come from.

Caches (the converted GGUF folder, calibration statistics, module effects) are keyed by this
digest, never by a path, so the same model installed in two virtual environments, or copied to
another folder, shares them. Hashing a file reads it once (about 1 s per GB); the digest is
remembered in ``<cache>/fingerprints.json`` under (resolved path, size, modification time), so
an unchanged file is not read again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from prunelab.atomic import write_json_atomic

MEMO_FILE = "fingerprints.json"
#: Files of a Hugging Face folder that decide its model: weights and architecture.
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf")


def file_digest(path: str | os.PathLike, cache_dir: str | os.PathLike | None) -> str:
    """SHA-256 of the file's bytes, remembered in ``cache_dir`` while the file is unchanged.

    ``cache_dir=None`` remembers nothing (for a file about to be renamed).
    """
    path = Path(path).resolve()
    stat = path.stat()
    memo_path = Path(cache_dir) / MEMO_FILE if cache_dir is not None else None
    memo_key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    memo = _read_memo(memo_path) if memo_path else {}
    if memo_key in memo:
        return memo[memo_key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    if memo_path is not None:
        write_json_atomic(memo_path, _read_memo(memo_path) | {memo_key: digest.hexdigest()})
    return digest.hexdigest()


def folder_digest(folder: str | os.PathLike, cache_dir: str | os.PathLike) -> str:
    """SHA-256 over a model folder's config.json and weight files (names and contents)."""
    folder = Path(folder)
    files = sorted({p for pattern in _WEIGHT_PATTERNS for p in folder.glob(pattern)})
    digest = hashlib.sha256()
    for file in [folder / "config.json", *files]:
        digest.update(f"{file.name}:{file_digest(file, cache_dir)}\n".encode())
    return digest.hexdigest()


def _read_memo(path: Path) -> dict[str, str]:
    """The remembered digests; an unreadable memo is only a lost shortcut."""
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}
