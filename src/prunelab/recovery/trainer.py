"""The recovery loop: micro-batches of recovery text, an optimizer, checkpoints, a merge.

``lora`` trains PEFT LoRA adapters with the next-token loss; ``distill`` trains adapters (or,
with ``train=full``, the pruned weights) on ``T^2 KL(teacher || student)`` plus ``lm_weight``
times the next-token loss, the dense teacher's logits computed on the fly for each
micro-batch. On the fly rather than cached: SmolLM2's 49k-token vocabulary makes one token's
logits 96 KB in float16, so 64k training tokens would need 6 GB of cache on disk to save one
teacher forward per micro-batch, which costs about a third of the student's step.

Full training leaves the embedding (tied with the LM head in the small models) frozen: it
holds most of a small model's parameters and is not what pruning changed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler

from prunelab.config.schema import RecoveryConfig
from prunelab.data.calibration import with_bos
from prunelab.data.corpora import load_corpus
from prunelab.eval.perplexity import evaluation_windows
from prunelab.recovery.checkpoint import (
    TrainingState,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from prunelab.recovery.data import window_order
from prunelab.recovery.lora import attach_lora, merge_lora
from prunelab.recovery.losses import distillation_loss, next_token_loss

log = logging.getLogger(__name__)

#: Called after every optimizer step with (step, loss, learning rate).
StepCallback = Callable[[int, float, float], None]
_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


@dataclass
class RecoveryOutcome:
    """The trained (merged) model and what training cost."""

    model: nn.Module
    dtype: str
    tokens: int
    micro_batches: int
    optimizer_steps: int
    epochs: float
    trainable_parameters: int
    wall_time_s: float
    tokens_per_s: float
    losses: list[float]
    resumed_from_step: int | None

    @property
    def final_loss(self) -> float:
        """Mean loss of the last tenth of the steps (one step's loss is noisy)."""
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return sum(tail) / len(tail)


def training_dtype(spec: RecoveryConfig, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 autocast on CUDA where it is supported, float32 elsewhere."""
    if spec.dtype == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return getattr(torch, spec.dtype)


def recover(model: nn.Module, tokenizer, spec: RecoveryConfig, device: torch.device,
            data_dir: str | None, checkpoint_dir: Path, identity: str,
            teacher: nn.Module | None = None,
            on_step: StepCallback | None = None, bos: bool = False) -> RecoveryOutcome:
    """Train ``model`` as ``spec`` says and return it merged (no adapter left).

    ``identity`` names the job: a checkpoint in ``checkpoint_dir`` with the same identity is
    resumed from, so a killed job relaunched ends with the weights of an uninterrupted run.
    ``teacher`` is the dense model (``distill`` only).
    """
    if (spec.name == "distill") != (teacher is not None):
        raise ValueError("recovery=distill needs a teacher, and only distill uses one")
    corpus = load_corpus(spec.data.dataset, spec.data.split, data_dir,
                         documents=spec.data.documents, path=spec.data.path)
    windows = evaluation_windows(corpus, tokenizer, spec.seqlen, spec.data.joiner, None)
    if bos:  # the model is evaluated after a BOS token (model.bos): it trains after one too
        windows = with_bos(windows, tokenizer)
    order = window_order(len(windows), spec.micro_batches, spec.batch_size, spec.seed)
    steps = math.ceil(spec.micro_batches / spec.grad_accumulation)
    dtype = training_dtype(spec, device)

    torch.manual_seed(spec.seed)  # LoRA's initial A matrices, then dropout
    student = make_trainable(model, spec)
    trainable = {name: p for name, p in student.named_parameters() if p.requires_grad}
    if spec.gradient_checkpointing:
        student.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(trainable.values(), lr=spec.lr,
                                  weight_decay=spec.weight_decay)
    scheduler = get_scheduler(_SCHEDULES[spec.lr_schedule], optimizer,
                              num_warmup_steps=round(spec.warmup_ratio * steps),
                              num_training_steps=steps)
    losses: list[float] = []
    start_step = 0
    state = load_checkpoint(checkpoint_dir, identity)
    if state is not None:
        start_step, losses = state.step, list(state.losses)
        with torch.no_grad():
            for name, tensor in state.trainable.items():
                trainable[name].copy_(tensor)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        torch.set_rng_state(state.rng)
        log.info("Recovery resumes from its checkpoint after step %d of %d", start_step, steps)

    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 \
        else contextlib.nullcontext()
    student.train()
    started = time.perf_counter()
    bar = tqdm(range(start_step, steps), desc=f"recovery ({spec.name})", unit="step",
               initial=start_step, total=steps)
    for step in bar:
        micro = range(step * spec.grad_accumulation,
                      min((step + 1) * spec.grad_accumulation, spec.micro_batches))
        step_loss = training_step(student, teacher, [windows[order[k]].to(device) for k in micro],
                                  spec, optimizer, autocast)
        scheduler.step()
        losses.append(step_loss)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if on_step is not None:
            on_step(step + 1, step_loss, scheduler.get_last_lr()[0])
        if spec.checkpoint_every and (step + 1) % spec.checkpoint_every == 0 \
                and step + 1 < steps:
            save_checkpoint(checkpoint_dir, identity, TrainingState(
                step + 1, {n: p.detach().cpu().clone() for n, p in trainable.items()},
                optimizer.state_dict(), scheduler.state_dict(), torch.get_rng_state(),
                losses))
    wall = time.perf_counter() - started
    student.eval()
    if spec.gradient_checkpointing:
        student.gradient_checkpointing_disable()
    trained = merge_lora(student) if spec.train == "lora" else student
    trained.requires_grad_(True)  # as the pruning stage left it
    remove_checkpoint(checkpoint_dir)
    tokens = spec.micro_batches * spec.batch_size * spec.seqlen
    done = spec.micro_batches - start_step * spec.grad_accumulation
    return RecoveryOutcome(
        model=trained, dtype=str(dtype).removeprefix("torch."), tokens=tokens,
        micro_batches=spec.micro_batches, optimizer_steps=steps,
        epochs=spec.micro_batches * spec.batch_size / len(windows),
        trainable_parameters=sum(p.numel() for p in trainable.values()),
        wall_time_s=wall,
        tokens_per_s=done * spec.batch_size * spec.seqlen / wall if wall > 0 else 0.0,
        losses=losses, resumed_from_step=start_step or None)


def make_trainable(model: nn.Module, spec: RecoveryConfig) -> nn.Module:
    """``model`` ready to train as ``spec.train`` says.

    ``lora``: LoRA adapters, the rest frozen; ``full``: every parameter but the input
    embedding (and an LM head tied to it).
    """
    if spec.train == "lora":
        return attach_lora(model, spec.lora)
    embedding = model.get_input_embeddings().weight
    for parameter in model.parameters():
        parameter.requires_grad_(parameter is not embedding)
    return model


def training_step(student: nn.Module, teacher: nn.Module | None,
                  micro_batches: list[torch.Tensor], spec: RecoveryConfig,
                  optimizer: torch.optim.Optimizer,
                  autocast: contextlib.AbstractContextManager) -> float:
    """One optimizer step of recovery over ``micro_batches`` (gradients accumulated); its loss.

    The learning-rate schedule is the caller's: the training benchmark times this step alone.
    """
    step_loss = 0.0
    for ids in micro_batches:
        with autocast:
            loss = _loss(student, teacher, ids, spec)
        (loss / len(micro_batches)).backward()
        step_loss += loss.item() / len(micro_batches)
    if spec.max_grad_norm > 0:
        trainable = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(trainable, spec.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss


def _loss(student: nn.Module, teacher: nn.Module | None, ids: torch.Tensor,
          spec: RecoveryConfig) -> torch.Tensor:
    logits = student(input_ids=ids, use_cache=False).logits
    if teacher is None:
        return next_token_loss(logits, ids)
    with torch.no_grad():
        target = teacher(input_ids=ids, use_cache=False).logits
    loss = distillation_loss(logits, target, spec.temperature)
    if spec.lm_weight:
        loss = loss + spec.lm_weight * next_token_loss(logits, ids)
    return loss
