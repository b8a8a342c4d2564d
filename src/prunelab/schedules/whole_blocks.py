"""Which whole decoder blocks go, for methods that remove blocks (``removes = "blocks"``).

Blocks are removed lowest score first, protected blocks never. With a count, exactly that
many go; with the schedule's ratio, blocks go while the removed cost (in the schedule's
target currency) stays within ``ratio`` of the prunable total: the nearest count that does
not exceed the budget. Module splits and floors do not apply to whole blocks.
"""

from __future__ import annotations

from prunelab.errors import PrunelabError
from prunelab.schedules.base import ScheduleParams


def select_blocks(scores: list[float], costs: list[float], params: ScheduleParams,
                  count: int | None) -> tuple[list[int], float]:
    """Removed block indices (ascending) and the budget they were chosen for."""
    if type(params) is not ScheduleParams or params.attention_ratio is not None \
            or params.min_heads or params.min_channels:
        raise PrunelabError(
            "This method removes whole blocks: only schedule.ratio, target and protect_first / "
            "protect_last apply. Use schedule=global or schedule=uniform without "
            "attention_ratio, min_heads or min_channels.")
    n = len(scores)
    protected = {i for i in range(n)
                 if i < params.protect_first or i >= n - params.protect_last}
    order = sorted((i for i in range(n) if i not in protected), key=lambda i: (scores[i], i))
    total = sum(costs)
    if count is not None:
        if count >= n:
            raise PrunelabError(f"{count} blocks cannot be removed from a model of {n}: at "
                                f"least one must remain. Ask for at most {n - 1}.")
        if count > len(order):
            raise PrunelabError(f"{count} blocks cannot be removed: the model has {n}, of "
                                f"which {len(protected)} are protected. Ask for at most "
                                f"{len(order)}.")
        chosen = order[:count]
        return sorted(chosen), sum(costs[i] for i in chosen)
    budget = params.ratio * total
    chosen, spent = [], 0.0
    for index in order:
        if spent + costs[index] > budget:
            break
        chosen.append(index)
        spent += costs[index]
    return sorted(chosen), budget
