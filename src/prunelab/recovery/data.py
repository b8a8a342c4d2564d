"""Recovery text as fixed windows, and the seeded order the training reads them in.

The windows are the joined text cut into consecutive ``seqlen``-token pieces (as perplexity
evaluation cuts it), so every token of the training range is seen once per epoch. The order
of micro-batch ``k`` depends only on the seed and ``k``: a resumed run reads exactly the
windows the uninterrupted run would have.
"""

from __future__ import annotations

import torch

from prunelab.data.calibration import tokenize
from prunelab.data.corpora import Corpus
from prunelab.errors import PrunelabError


def training_windows(corpus: Corpus, tokenizer, seqlen: int, joiner: str) -> torch.Tensor:
    """The ``[n, seqlen]`` windows of ``corpus``'s joined rows."""
    ids = tokenize(tokenizer, joiner.join(corpus.rows))
    count = ids.numel() // seqlen
    if count == 0:
        raise PrunelabError(
            f"Recovery data {corpus.dataset}/{corpus.split} has {ids.numel()} tokens, fewer "
            f"than one window of recovery.seqlen={seqlen}. Use more documents or a shorter "
            "seqlen.")
    return ids[: count * seqlen].view(count, seqlen)


def window_order(num_windows: int, micro_batches: int, batch_size: int,
                 seed: int) -> torch.Tensor:
    """``[micro_batches, batch_size]`` window indices: one seeded permutation per epoch."""
    needed = micro_batches * batch_size
    epochs = -(-needed // num_windows)
    perms = [torch.randperm(num_windows, generator=torch.Generator().manual_seed(seed + e))
             for e in range(epochs)]
    return torch.cat(perms)[:needed].view(micro_batches, batch_size)
