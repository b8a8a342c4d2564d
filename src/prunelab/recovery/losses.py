"""The training losses of recovery, written out so a test can check them by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of token ``t + 1`` given tokens up to ``t`` (float32)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """``T^2 * mean_tokens KL(softmax(t / T) || softmax(s / T))`` over every position.

    The ``T^2`` factor (Hinton et al.) keeps the gradient scale independent of ``T``, so the
    learning rate need not change with the temperature.
    """
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (teacher.exp() * (teacher - student)).sum(-1)
    return kl.mean() * temperature ** 2
