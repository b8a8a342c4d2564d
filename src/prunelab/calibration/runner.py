"""Run a model over the calibration samples while collectors gather statistics.

Two engines give the same statistics for one-shot methods. :func:`run_streaming` runs
ordinary forward passes batch by batch with every block's collectors attached: memory is the
weights plus one batch, time one forward pass. :func:`run_layerwise` runs one decoder block
at a time over all samples (models/layerwise.py), which is what offloading, streamed weights
and sequential methods need: block ``l`` runs over every sample while collectors gather
statistics, and its outputs become block ``l+1``'s inputs. Only one block needs to be on the
accelerator at a time (``offload``), or in memory at all (a streamed model), and activations
are held in two buffers of ``[nsamples, seqlen, hidden]``. In sequential mode a callback may
change block ``l`` (e.g. mask its pruned units) after its statistics are gathered and before
its outputs are computed, so that later blocks see the pruned outputs (Wanda-sp).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from prunelab.calibration.statistics import STATISTICS
from prunelab.errors import PrunelabError
from prunelab.models.adapters import LayerAdapter, ModelAdapter
from prunelab.models.layerwise import (
    RESIDENT,
    Buffer,
    Residency,
    capture_block_inputs,
    forward_block,
    to_device,
)

LayerStats = dict[str, dict[str, torch.Tensor]]
OnLayer = Callable[[int, LayerAdapter, LayerStats], None]


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
    residency: Residency = RESIDENT,
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
