"""Files and folders that appear complete under their final name, or not at all.

Everything prunelab writes for later reading (results.json, failure.json, caches, saved
models, zero-shot task files, tables) is written under a temporary name beside its target,
flushed to disk, and renamed into place. A full disk, an exception or a SIGKILL half-way
leaves at most a hidden temporary entry (removed when the writer can still clean up), never
a truncated file that a relaunch would mistake for finished work.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    """The process umask; reading it means setting it, so this runs once, at import."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Read once: changing the umask at write time would race with other threads creating files.
_UMASK = _read_umask()


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it becomes ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide shared caches
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_folder(folder: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder beside ``folder``; on success it becomes ``folder``.

    With ``replace=False`` an existing ``folder`` (made meanwhile by a concurrent job doing
    the same work) is kept and the staging copy discarded.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield staging
        for file in staging.rglob("*"):
            if file.is_file():
                _fsync(file)
        os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp's 0700 would hide shared caches
        if folder.exists():
            if not replace:
                return
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(staging, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


def _fsync(path: Path) -> None:
    """Flush a written file to the disk, where a full disk reports itself at the latest."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
