"""Run a model over the calibration samples while collectors gather statistics.

Two engines give the same statistics for one-shot methods. :func:`run_streaming` runs
ordinary forward passes batch by batch with every block's collectors attached: memory is the
weights plus one batch, time one forward pass. :func:`run_layerwise` runs one decoder block
at a time over all samples, which is what offloading and sequential methods need: block 0's
inputs are captured once; then block ``l`` runs over every sample while collectors gather
statistics, and its outputs become block ``l+1``'s inputs. Only one block needs to be on the
accelerator at a time (``offload``), and activations are held in two buffers of
``[nsamples, seqlen, hidden]``. In sequential mode a callback may change block ``l`` (e.g.
mask its pruned units) after its statistics are gathered and before its outputs are computed,
so that later blocks see the pruned outputs (Wanda-sp).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from prunelab.calibration.statistics import STATISTICS
from prunelab.errors import PrunelabError
from prunelab.models.adapters import LayerAdapter, ModelAdapter
from prunelab.models.streaming import WeightStore
from prunelab.spill import SpilledTensor, activation_buffer

LayerStats = dict[str, dict[str, torch.Tensor]]
#: Hidden states of every sample between two blocks: in memory, or spilled to disk.
Buffer = torch.Tensor | SpilledTensor
OnLayer = Callable[[int, LayerAdapter, LayerStats], None]


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

    def buffers(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
                ) -> tuple[Buffer, Buffer]:
        """The layer-wise pass's input and output buffers."""
        budget = None if self.buffer_budget_bytes is None else self.buffer_budget_bytes // 2
        return (activation_buffer(shape, dtype, device, budget, self.spill_dir),
                activation_buffer(shape, dtype, device, budget, self.spill_dir))


@torch.no_grad()
def run_layerwise(
    adapter: ModelAdapter,
    samples: torch.Tensor,
    statistics: list[str],
    batch_size: int,
    device: torch.device,
    offload: bool = False,
    on_layer: OnLayer | None = None,
    sequential: bool = False,
    desc: str = "calibration",
    residency: Residency = Residency(),
) -> list[LayerStats]:
    """Gather ``statistics`` for every block; return one ``{kind: {field: tensor}}`` per block.

    ``offload`` keeps the blocks where they are (e.g. CPU) and moves each to ``device`` only
    while it runs. With ``sequential``, ``on_layer`` runs before the block's outputs are
    computed (a second pass), so changes it makes propagate to later blocks.
    """
    collector_classes = [STATISTICS.get(name) for name in statistics]
    storage = torch.device("cpu") if offload else device
    embed = adapter.embed_tokens
    with residency.resident(embed, device=device):
        model_device = next(embed.parameters()).device
        shape = (samples.shape[0], samples.shape[1], adapter.config.hidden_size)
        inputs, outputs = residency.buffers(shape, next(embed.parameters()).dtype, storage)
        inputs, block_kwargs = capture_block_inputs(adapter, samples, batch_size, model_device,
                                                    inputs)
    block_kwargs = to_device(block_kwargs, device)
    results: list[LayerStats] = []
    for index, layer in enumerate(tqdm(adapter.layers, desc=desc, unit="block")):
        block = adapter.decoder_layers[index]
        with residency.resident(block, device=device):
            if offload:
                block.to(device)
            results.append(_block_statistics(index, layer, collector_classes, inputs,
                                             outputs, block_kwargs[index], batch_size,
                                             device, on_layer, sequential))
            if offload:
                block.to(storage)
        inputs, outputs = outputs, inputs
    return results


def _block_statistics(index: int, layer: LayerAdapter, collector_classes: list, inputs: Buffer,
                      outputs: Buffer, layer_kwargs: dict, batch_size: int,
                      device: torch.device, on_layer: OnLayer | None, sequential: bool
                      ) -> LayerStats:
    """One block of :func:`run_layerwise`: statistics, ``on_layer``, outputs into ``outputs``."""
    block = layer.layer
    collectors = [cls(layer) for cls in collector_classes]
    for collector in collectors:
        collector.attach()
    try:
        forward_block(block, inputs, layer_kwargs, batch_size, device,
                      None if sequential else outputs)
    finally:
        for collector in collectors:
            collector.detach()
    stats = {c.name: c.result() for c in collectors}
    _check_finite(index, stats)
    if on_layer is not None:
        on_layer(index, layer, stats)
    if sequential:
        forward_block(block, inputs, layer_kwargs, batch_size, device, outputs)
    return stats


def _check_finite(index: int, stats: LayerStats) -> None:
    for kind, fields in stats.items():
        for field, tensor in fields.items():
            if not torch.isfinite(tensor).all():
                raise PrunelabError(
                    f"Calibration statistic {kind}.{field} of block {index} holds NaN or Inf "
                    "(activation overflow, e.g. in float16). Calibrate in float32 "
                    "(model.dtype=float32) or bfloat16."
                )


@torch.no_grad()
def run_streaming(adapter: ModelAdapter, samples: torch.Tensor, statistics: list[str],
                  batch_size: int, device: torch.device, desc: str = "calibration"
                  ) -> list[LayerStats]:
    """One-shot statistics of every block from ordinary forward passes (no LM head)."""
    collector_classes = [STATISTICS.get(name) for name in statistics]
    collectors = [[cls(layer) for cls in collector_classes] for layer in adapter.layers]
    decoder = adapter.model.base_model
    try:
        for per_layer in collectors:
            for collector in per_layer:
                collector.attach()
        for batch in tqdm(samples.split(batch_size), desc=desc, unit="batch"):
            decoder(input_ids=batch.to(device), use_cache=False)
    finally:
        for per_layer in collectors:
            for collector in per_layer:
                collector.detach()
    results = []
    for index, per_layer in enumerate(collectors):
        stats = {c.name: c.result() for c in per_layer}
        _check_finite(index, stats)
        results.append(stats)
    return results
