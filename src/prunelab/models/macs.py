"""Multiply-accumulates per token of the prunable sub-layers: the one MAC formula.

Linear layers cost their weight count per token; attention scores and the weighted sum of
values cost ``2 * head_dim * context`` per query head, at an average attended ``context``.
The speed report (eval/speed.py) totals these over a model, and ``schedule.target=macs``
(schedules/costs.py) prices single units with them, so the budget and the report agree.
"""

from __future__ import annotations


def attention_macs(hidden: int, head_dim: int, heads: int, kv_heads: int,
                   context: float) -> float:
    """q/o projections and scores of ``heads`` query heads plus k/v of ``kv_heads``."""
    projections = hidden * head_dim * (2 * heads + 2 * kv_heads)
    return float(projections + 2 * heads * head_dim * context)


def mlp_macs(hidden: int, channels: int) -> float:
    """gate, up and down projections of ``channels`` MLP channels."""
    return float(3 * hidden * channels)
