"""The pruning-method contract and its registry.

A method turns a loaded model into a pruned one in place. Each method is one file that
subclasses :class:`PruningMethod`, declares its config fields as a ``Params`` dataclass (so
configs are validated before anything loads) and registers itself with ``@METHODS.register``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from prunelab.registry import Registry


@dataclass
class NoParams:
    """For methods without parameters."""


@dataclass
class PruneOutcome:
    """What a method reports besides the model it changed (timings, per-unit details)."""

    ratio_asked: float = 0.0
    plan: Any = None  # models.plan.PruningPlan of what was kept, None for dense
    timings_s: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class PruningMethod(ABC):
    """Base class of all pruning methods."""

    Params: ClassVar[type] = NoParams
    #: False for methods that never remove anything (dense): no ratio is asked of them.
    prunes: ClassVar[bool] = True

    def __init__(self, params: Any):
        self.params = params

    @classmethod
    def uses_calibration(cls) -> bool:
        """Whether the method reads calibration data (else the calibration config is inert)."""
        return False

    @abstractmethod
    def prune(self, run: Any, loaded: Any) -> PruneOutcome:
        """Prune ``loaded.model`` in place under the job's config ``run``."""


METHODS: Registry[PruningMethod] = Registry(
    "method", PruningMethod,
    "config method.name -> PruningMethod subclass; its Params dataclass is the method group schema",
)
