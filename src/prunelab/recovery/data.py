"""The seeded order recovery reads its windows in.

The windows are the joined text cut into consecutive ``seqlen``-token pieces (by
``eval.perplexity.evaluation_windows``), so every token is seen once per epoch. The order of
micro-batch ``k`` depends only on the seed and ``k``: a resumed run reads exactly the windows
the uninterrupted run would have.
"""

from __future__ import annotations

import torch


def window_order(num_windows: int, micro_batches: int, batch_size: int,
                 seed: int) -> torch.Tensor:
    """``[micro_batches, batch_size]`` window indices: one seeded permutation per epoch."""
    needed = micro_batches * batch_size
    epochs = -(-needed // num_windows)
    perms = [torch.randperm(num_windows, generator=torch.Generator().manual_seed(seed + e))
             for e in range(epochs)]
    return torch.cat(perms)[:needed].view(micro_batches, batch_size)
