"""The LM head over a bounded number of tokens at a time.

Vocabularies are large (49k tokens for SmolLM2, 262k for Gemma-3): one perplexity batch of
16 x 128 tokens holds 0.4 GB of float32 logits on SmolLM2 and 2.1 GB on Gemma-3, and the
log-softmax doubles it. Callers keep the batch's final hidden states (a few KB per token) and
turn them into logits one chunk of tokens at a time, so logits never exceed a fixed budget.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Bytes of logits (and their log-softmax) alive at once.
LOGITS_BUDGET_BYTES = 64 * 2**20


def tokens_per_chunk(vocab: int, bytes_per_value: int = 4,
                     budget_bytes: int = LOGITS_BUDGET_BYTES) -> int:
    """Tokens whose logits and log-probabilities (two vocab-wide rows each) fit the budget."""
    return max(1, budget_bytes // (2 * vocab * bytes_per_value))


@torch.no_grad()
def next_token_nll(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module,
                   budget_bytes: int = LOGITS_BUDGET_BYTES) -> float:
    """Sum of ``-log p(target)`` over tokens, from final hidden states ``[tokens, hidden]``.

    Equal to cross-entropy over the whole batch's logits (float32, summed in float64).
    """
    chunk = tokens_per_chunk(head.weight.shape[0], 4, budget_bytes)
    total = 0.0
    for start in range(0, hidden.shape[0], chunk):
        logits = head(hidden[start:start + chunk]).float()
        total += float(F.cross_entropy(logits, targets[start:start + chunk],
                                       reduction="sum").double())
    return total
