"""Decoder blocks run one at a time over many sequences (calibration, layer-wise evaluation).

Block 0's inputs are captured for every sequence (with the keywords each block is called
with), then each block runs over all of them and its outputs become the next block's inputs.
Only one block's weights need to be on the accelerator, or in memory at all for a streamed
model (:class:`Residency`), and the hidden states between blocks live in two buffers of
``[sequences, seqlen, hidden]`` that spill to disk past a budget (prunelab/spill.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from prunelab.models.adapters import ModelAdapter
from prunelab.models.streaming import WeightStore
from prunelab.spill import SpilledTensor, activation_buffer

#: Hidden states of every sequence between two blocks: in memory, or spilled to disk.
Buffer = torch.Tensor | SpilledTensor


class _StopForward(Exception):
    """Raised by the capture hook once block 0's inputs are recorded."""


@torch.no_grad()
def capture_block_inputs(adapter: ModelAdapter, samples: torch.Tensor, batch_size: int,
                         device: torch.device, buffer: Buffer | None = None
                         ) -> tuple[Buffer, list[dict]]:
    """Hidden states entering block 0 for every sample, and the keywords each block gets.

    Blocks may get different keywords (Gemma-3's sliding-window and global layers have their
    own masks and rotary embeddings), so the first batch passes through every block, each
    returning its input unchanged (no block computes, and no block's weights are needed),
    to record them; later batches stop at block 0. ``buffer`` (``[nsamples, seqlen,
    hidden]``) receives the states; by default one is allocated in memory.
    """
    blocks = adapter.decoder_layers
    filled = [0]
    per_block: list[dict] = []
    holder: list[Buffer] = [] if buffer is None else [buffer]

    def record(kwargs: dict) -> None:
        per_block.append({k: v for k, v in kwargs.items()
                          if k not in ("hidden_states", "cache", "past_key_values")}
                         | {"use_cache": False})
        if len(per_block) == len(blocks):
            raise _StopForward

    def first(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if not holder:  # allocated once: no list of batches and no concatenated copy
            holder.append(hidden.new_empty((samples.shape[0], *hidden.shape[1:])))
        holder[0][filled[0]:filled[0] + hidden.shape[0]] = hidden
        filled[0] += hidden.shape[0]
        if len(per_block) == len(blocks):
            raise _StopForward
        record(kwargs)

    handles = [blocks[0].register_forward_pre_hook(first, with_kwargs=True)]
    handles += [block.register_forward_pre_hook(lambda _m, _a, kwargs: record(kwargs),
                                                with_kwargs=True) for block in blocks[1:]]
    for block in blocks:
        block.forward = _pass_through
    try:
        for batch in samples.split(batch_size):
            try:
                adapter.model(input_ids=batch.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        for block in blocks:
            del block.forward
        for handle in handles:
            handle.remove()
    return holder[0], per_block


def _pass_through(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return hidden_states


def to_device(value, device: torch.device, _copies: dict | None = None):
    """``value`` (tensors nested in tuples, lists, dicts) moved to ``device``.

    A tensor met twice (blocks sharing a mask) is moved once.
    """
    copies = {} if _copies is None else _copies
    if isinstance(value, torch.Tensor):
        if id(value) not in copies:
            copies[id(value)] = value.to(device)
        return copies[id(value)]
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device, copies) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device, copies) for k, v in value.items()}
    return value


def _kwargs_for(layer_kwargs: dict, batch: int) -> dict:
    """Slice batch-shaped tensors (an explicit attention mask) to a smaller last batch."""
    out = {}
    for key, value in layer_kwargs.items():
        if key == "attention_mask" and isinstance(value, torch.Tensor) and value.shape[0] > batch:
            value = value[:batch]
        out[key] = value
    return out


def block_output(block: nn.Module, hidden: torch.Tensor, layer_kwargs: dict) -> torch.Tensor:
    """The hidden states a decoder block returns for ``hidden`` (the captured keywords)."""
    out = block(hidden, **_kwargs_for(layer_kwargs, hidden.shape[0]))
    return out[0] if isinstance(out, tuple) else out


def forward_block(block: nn.Module, inputs: torch.Tensor, layer_kwargs: dict,
                  batch_size: int, device: torch.device, outputs: torch.Tensor | None) -> None:
    """Run ``block`` over ``inputs`` batch by batch, writing to ``outputs`` (may be ``inputs``)."""
    for start in range(0, inputs.shape[0], batch_size):
        hidden = inputs[start:start + batch_size].to(device)
        out = block_output(block, hidden, layer_kwargs)
        if outputs is not None:
            outputs[start:start + hidden.shape[0]] = out.to(outputs.device)


@dataclass(frozen=True)
class Residency:
    """Where weights and activations live during a layer-wise pass.

    ``weights`` (a streamed model): each block, and the embeddings while block 0's inputs
    are captured, is read from disk only while it runs. The two activation buffers spill to
    files in ``spill_dir`` when together they would exceed ``buffer_budget_bytes``.
    """

    weights: WeightStore | None = None
    buffer_budget_bytes: int | None = None
    spill_dir: str | None = None

    def resident(self, *modules: nn.Module, device: torch.device
                 ) -> contextlib.AbstractContextManager:
        """Real weights in ``modules`` for a ``with`` block (always, unless streamed)."""
        if self.weights is None:
            return contextlib.nullcontext()
        return self.weights.materialized(*modules, device=device)

    def buffers(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                count: int = 2) -> tuple[Buffer, ...]:
        """The layer-wise pass's buffers (input and output, or ``count``), sharing the budget."""
        budget = (None if self.buffer_budget_bytes is None
                  else self.buffer_budget_bytes // count)
        return tuple(activation_buffer(shape, dtype, device, budget, self.spill_dir)
                     for _ in range(count))


#: Weights resident, buffers never spilled: the default of every layer-wise pass.
RESIDENT = Residency()


@torch.no_grad()
def ragged_hidden_states(adapter: ModelAdapter, residency: Residency,
                         sequences: list[torch.Tensor], batches: list[list[int]],
                         device: torch.device, desc: str = "layer-wise"
                         ) -> tuple[Buffer, list[int]]:
    """Last block's hidden states of sequences of different lengths, computed block by block.

    ``batches`` lists which sequences run together; a batch is right-padded to its longest
    sequence, which under causal attention changes none of the real positions (lm-eval pads
    its batches the same way). The buffers hold real tokens only, token-major (``[tokens,
    hidden]``, a batch's sequences one after another), so padding costs no memory. Returns the
    buffer and the row where each sequence starts.
    """
    starts, row = [0] * len(sequences), 0
    for batch in batches:
        for index in batch:
            starts[index], row = row, row + len(sequences[index])
    storage = torch.device("cpu") if residency.weights is not None else device
    kwargs_by_length: dict[int, list[dict]] = {}
    with residency.resident(adapter.embed_tokens, device=device):
        dtype = next(adapter.embed_tokens.parameters()).dtype
        inputs, outputs = residency.buffers((row, adapter.config.hidden_size), dtype, storage)
        for batch in batches:
            padded = _right_padded([sequences[i] for i in batch])
            hidden, block_kwargs = capture_block_inputs(adapter, padded, len(batch), device)
            if padded.shape[1] not in kwargs_by_length:  # batch-independent: [1, length, ...]
                kwargs_by_length[padded.shape[1]] = to_device(block_kwargs, device)
            _write_real(inputs, hidden, [len(sequences[i]) for i in batch], starts[batch[0]])
    for index, block in enumerate(tqdm(adapter.decoder_layers, desc=desc, unit="block")):
        with residency.resident(block, device=device):
            for batch in batches:
                lengths = [len(sequences[i]) for i in batch]
                first = starts[batch[0]]
                padded = _padded_rows(inputs[first:first + sum(lengths)], lengths).to(device)
                out = block_output(block, padded, kwargs_by_length[max(lengths)][index])
                _write_real(outputs, out, lengths, first)
        inputs, outputs = outputs, inputs
    return inputs, starts


def _right_padded(sequences: list[torch.Tensor], pad: int = 0) -> torch.Tensor:
    out = torch.full((len(sequences), max(len(s) for s in sequences)), pad, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        out[row, :len(sequence)] = sequence
    return out


def _padded_rows(rows: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Token-major rows of consecutive sequences as a right-padded ``[batch, longest, ...]``."""
    out = rows.new_zeros((len(lengths), max(lengths), *rows.shape[1:]))
    for index, piece in enumerate(rows.split(lengths)):
        out[index, :len(piece)] = piece
    return out


def _write_real(buffer: Buffer, padded: torch.Tensor, lengths: list[int], first: int) -> None:
    """The real positions of a padded batch, written token-major from row ``first``."""
    rows = torch.cat([padded[i, :n] for i, n in enumerate(lengths)])
    buffer[first:first + rows.shape[0]] = rows.to(buffer.device)
