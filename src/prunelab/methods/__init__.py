"""The pruning-method contract: a method is a pure scorer.

A method is one module of this package, named as its config name (``methods/flap.py`` is
``method=flap``; :data:`prunelab.registry.METHODS` finds it from the file), holding one
:class:`PruningMethod` subclass registered with :func:`register`. It declares its config
fields (``Params``), the calibration statistics it reads, what it removes and what else it
needs; the pruning stage (prunelab/pruning.py) calibrates, asks for scores, allocates, cuts
and reports. A method therefore receives blocks (:class:`LayerAdapter`), their statistics and
module-removal effects, and returns scores; it never sees the job's config, the data, the
schedules, surgery or tracking.

What a method removes (``removes``):

- ``units``: query heads and MLP channels, scored block by block (:meth:`score_block`), then
  allocated by the job's schedule;
- ``blocks``: whole decoder blocks, scored together (:meth:`score_blocks`) and removed lowest
  score first to the schedule's ratio (or the count the method asks for);
- ``nothing``: the dense reference.

What else it needs (``needs``, names from :data:`CAPABILITIES`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from prunelab.calibration.ablation import ModuleEffects
from prunelab.calibration.runner import LayerStats
from prunelab.calibration.statistics import STATISTICS
from prunelab.errors import unknown_name_message
from prunelab.models.adapters import LayerAdapter
from prunelab.registry import METHODS

#: What a method may ask of the pruning stage besides statistics, and what each means.
CAPABILITIES = {
    "sequential": "calibrate each block on the outputs of the already-pruned previous blocks "
                  "(scores and allocation block by block)",
    "module_effects": "measure the model's change when each sub-layer is replaced by its mean "
                      "output (calibration/ablation.py), for module_scores",
    "gradients": "the gradient of the mean next-token loss on the calibration samples with "
                 "respect to each projection weight, as stats['gradients'][<projection>]",
}
REMOVES = ("units", "blocks", "nothing")


@dataclass
class NoParams:
    """For methods without parameters."""


@dataclass
class UnitScores:
    """Importance of each query head and MLP channel of one block (higher = keep)."""

    heads: torch.Tensor
    channels: torch.Tensor


@dataclass
class BlockScores:
    """Importance of each decoder block (higher = keep), and how many to remove.

    ``count`` is None when the schedule's ratio decides.
    """

    scores: list[float]
    count: int | None = None


@dataclass(frozen=True)
class EffectsRequest:
    """Which module-removal effects a method wants: the estimator, and adjacent pairs too."""

    estimator: str
    pairs: bool


class PruningMethod:
    """Base class of all pruning methods (see the module docstring for the contract)."""

    Params: ClassVar[type] = NoParams
    removes: ClassVar[Literal["units", "blocks", "nothing"]] = "units"
    #: statistic kinds (calibration/statistics.py) gathered for every block
    statistics: ClassVar[tuple[str, ...]] = ()
    #: names from :data:`CAPABILITIES`
    needs: ClassVar[frozenset[str]] = frozenset()
    #: ``Params`` fields that set the budget as ``schedule.ratio`` does (a sweep over them is a
    #: sweep over the ratio: tables put their jobs in one row, not one row per value)
    budget_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Any):
        self.params = params

    @classmethod
    def prunes(cls) -> bool:
        """False for methods that never remove anything (dense): no ratio is asked of them."""
        return cls.removes != "nothing"

    @classmethod
    def uses_calibration(cls) -> bool:
        """Whether the method reads calibration data (else the calibration config is inert)."""
        return bool(cls.statistics) or bool(cls.needs & {"module_effects", "gradients"})

    @property
    def bias_compensation(self) -> bool:
        """Whether removed units' mean contribution is folded into a bias."""
        return bool(getattr(self.params, "bias_compensation", False))

    def score_block(self, index: int, layer: LayerAdapter, stats: LayerStats,
                    comparable: bool) -> UnitScores:
        """Scores of block ``index``; ``comparable`` asks for scores comparable across blocks."""
        raise NotImplementedError(f"{type(self).__name__} removes {self.removes}, it does not "
                                  "score heads and channels")

    def score_blocks(self, layers: list[LayerAdapter], stats: list[LayerStats]) -> BlockScores:
        """Scores of every decoder block (``removes = "blocks"``)."""
        raise NotImplementedError(f"{type(self).__name__} removes {self.removes}, it does not "
                                  "score whole blocks")

    def effects_request(self) -> EffectsRequest:
        """The module-removal effects to measure (``needs`` has ``module_effects``)."""
        raise NotImplementedError(f"{type(self).__name__} does not use module effects")

    def module_scores(self, effects: ModuleEffects) -> list[tuple[float, float]]:
        """Importance of each block's attention and MLP as wholes, from ``effects``."""
        raise NotImplementedError(f"{type(self).__name__} does not score whole modules")


def check_declarations(cls: type) -> None:
    """Refuse a method class whose declarations name something the stage does not know."""
    if not (isinstance(cls, type) and issubclass(cls, PruningMethod)):
        raise TypeError(f"{cls!r} must subclass prunelab.methods.PruningMethod")
    name = cls.__name__
    problems = [f"removes: {unknown_name_message('removal kind', cls.removes, REMOVES)}"
               ] if cls.removes not in REMOVES else []
    problems += [f"needs: {unknown_name_message('capability', need, CAPABILITIES)}"
                for need in sorted(cls.needs) if need not in CAPABILITIES]
    kinds = STATISTICS.names()
    problems += [f"statistics: {unknown_name_message('statistic kind', kind, kinds)}"
                for kind in cls.statistics if kind not in kinds]
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    problems += [f"budget_params: {field!r} is not a field of {cls.Params.__name__}"
                for field in cls.budget_params if field not in fields]
    if "sequential" in cls.needs and cls.removes != "units":
        problems.append("needs: sequential calibration allocates heads and channels block by "
                       f"block, so it needs removes='units', not {cls.removes!r}")
    if {"sequential", "gradients"} <= cls.needs:
        problems.append("needs: sequential and gradients together are not supported (the "
                       "gradients are taken on the unpruned model in one pass)")
    if problems:
        raise TypeError(f"method class {name}: " + " ".join(problems))
    if "module_effects" in cls.needs and cls.module_scores is PruningMethod.module_scores:
        raise TypeError(f"{name} needs module_effects but does not define module_scores")
    scorer = {"units": "score_block", "blocks": "score_blocks"}.get(cls.removes)
    if scorer and getattr(cls, scorer) is getattr(PruningMethod, scorer):
        raise TypeError(f"{name} removes {cls.removes} but does not define {scorer}")


def register(name: str) -> Callable[[type], type]:
    """Class decorator: check the method's declarations, then register it as ``name``."""

    def decorator(cls: type) -> type:
        check_declarations(cls)
        METHODS.add(name, cls)
        return cls

    return decorator


__all__ = ["CAPABILITIES", "BlockScores", "EffectsRequest", "NoParams", "PruningMethod",
           "UnitScores", "check_declarations", "register"]
