"""What makes two jobs the same job, and how two configs differ.

A job's *fingerprint* hashes the parts of its resolved config that can change its numbers:
not where files go (``paths``), how it is logged (``logger``), its name in a sweep
(``experiment_name``), the resume switches (``overwrite``, ``save_model``) or the metric a
sweeper reads (``objective``). A method that removes nothing ignores the schedule and
calibration, a method that reads no calibration data ignores calibration, and
``recovery=none`` adds nothing (old results keep their fingerprints), so ``method=dense`` at
three ratios is one job. Resume checks and table rows use it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from prunelab.registry import METHODS

_NOT_RESULT_CHANGING = ("paths", "logger", "experiment_name", "overwrite", "save_model",
                        "objective")
#: Options added after jobs had been run: (section, switch, the switch's value that means "as
#: before the option existed", keys dropped then; None drops the whole section). A job at that
#: value is the job it was before, so it keeps its old fingerprint.
_LATER_OPTIONS = (
    ("recovery", "name", "none", None),
    ("schedule", "head_groups", "any", ("head_groups",)),
    ("benchmark.speed", "reference", "none", ("reference", "confidence")),
    ("schedule", "target_shapes", None, ("target_shapes",)),
    ("schedule", "target_weights", None, ("target_weights",)),
    ("schedule", "target_decode", None, ("target_decode",)),
)
#: Latency budgets became fractions of the whole model's measured time (they were of the
#: blocks' sub-layers at 1 x 128): a job with such a target is not the job it was before.
_LATENCY_CURRENCY = "whole model at its shapes"


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved job config that determines its results (a deep copy)."""
    kept = {k: copy.deepcopy(v) for k, v in config.items() if k not in _NOT_RESULT_CHANGING}
    for path, switch, neutral, keys in _LATER_OPTIONS:
        *parents, name = path.split(".")
        holder = kept
        for parent in parents:
            holder = holder.get(parent) or {}
        section = holder.get(name)
        if not isinstance(section, dict) or section.get(switch, neutral) != neutral:
            continue
        if keys is None:
            del holder[name]
        for key in keys or ():
            section.pop(key, None)
    schedule = kept.get("schedule")
    if isinstance(schedule, dict) and str(schedule.get("target", "")).startswith("latency"):
        schedule["latency_currency"] = _LATENCY_CURRENCY
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
