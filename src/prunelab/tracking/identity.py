"""What makes two jobs the same job, and how two configs differ.

A job's *fingerprint* hashes the parts of its resolved config that can change its numbers:
not where files go (``paths``), how it is logged (``logger``), its name in a sweep
(``experiment_name``) or the resume switches (``overwrite``, ``save_model``). A method that
removes nothing ignores the schedule and calibration, a method that reads no calibration
data ignores calibration, and ``recovery=none`` adds nothing (old results keep their
fingerprints), so ``method=dense`` at three ratios is one job. Resume checks and table rows
use it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from prunelab.registry import METHODS

_NOT_RESULT_CHANGING = ("paths", "logger", "experiment_name", "overwrite", "save_model")


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved job config that determines its results (a deep copy)."""
    kept = {k: copy.deepcopy(v) for k, v in config.items() if k not in _NOT_RESULT_CHANGING}
    if (kept.get("recovery") or {}).get("name", "none") == "none":
        kept.pop("recovery", None)  # no training: the same job as before recovery existed
    if (kept.get("schedule") or {}).get("head_groups", "any") == "any":
        kept.get("schedule", {}).pop("head_groups", None)  # as before the option existed
    speed = (kept.get("benchmark") or {}).get("speed") or {}
    if speed.get("reference", "none") == "none":  # nothing paired: as before the options
        speed.pop("reference", None)
        speed.pop("confidence", None)
    name = config.get("method", {}).get("name")
    if name in METHODS:
        method = METHODS.get(name)
        if not method.prunes():
            kept.pop("schedule", None)
        if not method.uses_calibration():
            kept.pop("calibration", None)
    return kept


def job_fingerprint(config: dict[str, Any]) -> str:
    """A short stable hash of :func:`comparable_config`."""
    text = json.dumps(comparable_config(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys (lists stay values)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


ABSENT = "<absent>"


def differing_keys(configs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Dotted keys whose values are not the same in every config, with the values seen."""
    flats = [flatten(c) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    differing = {}
    for key in keys:
        values = [f.get(key, ABSENT) for f in flats]
        if any(v != values[0] for v in values[1:]):
            differing[key] = values
    return differing


def describe_differences(differing: dict[str, list[Any]], limit: int = 8) -> str:
    """``key: a vs b`` lines for an error message."""
    lines = []
    for key, values in list(differing.items())[:limit]:
        shown = []
        for value in values:
            if value not in shown:
                shown.append(value)
        lines.append(f"  {key}: {' vs '.join(repr(v) for v in shown)}")
    if len(differing) > limit:
        lines.append(f"  ... and {len(differing) - limit} more")
    return "\n".join(lines)
