"""Errors a user can cause. Each message ends with what to do about it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PrunelabError(Exception):
    """Base class: a user-facing error whose message says what to do."""


class ConfigError(PrunelabError):
    """The composed configuration is invalid (collects every problem found)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


class DataMissingError(PrunelabError):
    """A dataset or model file is not available offline and the hub cannot be reached."""


class DiskFullError(PrunelabError):
    """A write ran out of space (ENOSPC); nothing partial was kept under a final name."""


class UnsupportedModelError(PrunelabError):
    """The model's architecture has no adapter."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return ' Did you mean: x?' for close matches, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""


def unknown_name_message(kind: str, name: str, available: Iterable[str]) -> str:
    """One-line message for an unknown registry or option name."""
    names = sorted(available)
    return f"Unknown {kind} {name!r}.{did_you_mean(name, names)} Available: {', '.join(names)}."


class CorruptFileError(PrunelabError):
    """A file prunelab reads is truncated, unparsable or was modified after it was written."""


class NonFiniteError(PrunelabError):
    """Weights or calibration results hold NaN or Inf: no score computed from them means a thing."""
