"""Recovery checkpoints: everything a relaunched job needs to continue bit for bit.

A checkpoint holds the trainable tensors, the optimizer and learning-rate schedule states,
the step, the losses so far and the random state (LoRA dropout), under the identity of the
job that wrote it; one of another job (another plan, recipe or model) is ignored, with a
warning. It is written atomically, so a job killed mid-write leaves the previous one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunelab.atomic import atomic_file

log = logging.getLogger(__name__)

#: The checkpoint file in the job folder (removed when recovery finishes).
CHECKPOINT_FILE = "recovery_checkpoint.pt"


@dataclass
class TrainingState:
    """Where training stands after ``step`` optimizer steps."""

    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: torch.Tensor
    losses: list[float]


def save_checkpoint(folder: Path, identity: str, state: TrainingState) -> Path:
    """Write ``state`` as the job's checkpoint (replacing the previous one)."""
    path = Path(folder) / CHECKPOINT_FILE
    with atomic_file(path) as tmp:
        torch.save({"identity": identity, **state.__dict__}, tmp)
    return path


def load_checkpoint(folder: Path, identity: str) -> TrainingState | None:
    """The job's checkpoint, or None when there is none or it belongs to another job."""
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file is no checkpoint: start over, loudly
        log.warning("Recovery checkpoint %s is unreadable (%s); training starts over", path, err)
        return None
    if data.pop("identity", None) != identity:
        log.warning("Recovery checkpoint %s was written by another job (other plan, recipe or "
                    "model); training starts over", path)
        return None
    return TrainingState(**data)


def remove_checkpoint(folder: Path) -> None:
    """Delete the checkpoint once training finished (it can be as large as the model x 3)."""
    (Path(folder) / CHECKPOINT_FILE).unlink(missing_ok=True)
