"""Surgery of a streamed model, written block by block into a sharded safetensors folder.

The pruned model never exists in memory, and neither does the dense one: each source block
is read from disk (models/streaming.py), cut exactly as :func:`~prunelab.models.surgery.
prune_model` cuts it (same config, same :func:`fill_pruned_block`), written to a shard of its
own and dropped; the embeddings, final norm and (untied) LM head are copied last. The folder
holds the tensors :func:`~prunelab.models.surgery.save_pruned` would write, under the same
names, plus ``model.safetensors.index.json``; config, remote code, tokenizer and plan as
there.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from prunelab.atomic import atomic_folder
from prunelab.models.adapters import ModelAdapter, adapter_for
from prunelab.models.plan import PruningPlan
from prunelab.models.pruned import FAMILIES
from prunelab.models.streaming import WeightStore
from prunelab.models.surgery import Means, fill_pruned_block, pruned_config, write_beside_weights

INDEX_FILE = "model.safetensors.index.json"


@torch.no_grad()
def write_pruned_streamed(store: WeightStore, adapter: ModelAdapter, tokenizer,
                          plan: PruningPlan, means: Means | None, folder: Path,
                          record: dict | None = None) -> Path:
    """Write the pruned model of ``plan`` to ``folder``, one block in memory at a time."""
    if len(plan.layers) != len(adapter.layers):
        raise RuntimeError(f"plan has {len(plan.layers)} layers, model {len(adapter.layers)}")
    config = pruned_config(adapter, plan, means)
    config.auto_map = FAMILIES[config.model_type].auto_map
    config.dtype = store.dtype  # what save_pretrained records of a model's weights
    with init_empty_weights(include_buffers=False):
        pruned = FAMILIES[config.model_type].model_cls(config).to(store.dtype)
    target = adapter_for(pruned)
    names = {module: name for name, module in pruned.named_modules()}
    shards = len(plan.layers) + 1
    weight_map: dict[str, str] = {}
    total = 0
    with atomic_folder(Path(folder)) as staging:
        blocks = zip(target.layers, adapter.layers, plan.layers)
        for i, (dst, src, keep) in enumerate(tqdm(blocks, total=len(plan.layers),
                                                  desc="surgery", unit="block")):
            with store.materialized(src.layer):
                dst.layer.to_empty(device="cpu")
                fill_pruned_block(dst, src, keep, means[i] if means else (None, None))
                total += _write_shard(staging, i, shards, _state(dst.layer, names), weight_map)
                dst.layer.to("meta")
        fixed = [(target.embed_tokens, adapter.embed_tokens),
                 (target.final_norm, adapter.final_norm)]
        if not config.tie_word_embeddings:
            fixed.append((target.lm_head, adapter.lm_head))
        with store.materialized(*(src for _, src in fixed)):
            tensors = {}
            for dst, src in fixed:
                tensors[f"{names[dst]}.weight"] = src.weight.detach().contiguous()
            total += _write_shard(staging, shards - 1, shards, tensors, weight_map)
        (staging / INDEX_FILE).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
            indent=1))
        config.save_pretrained(staging)
        write_beside_weights(staging, config.model_type, tokenizer, plan, record)
    return Path(folder)


def _state(block: nn.Module, names: dict[nn.Module, str]) -> dict[str, torch.Tensor]:
    """A block's saved tensors under their names in the whole model."""
    return {f"{names[block]}.{key}": value for key, value in block.state_dict().items()}


def _write_shard(staging: Path, index: int, shards: int, tensors: dict[str, torch.Tensor],
                 weight_map: dict[str, str]) -> int:
    """Save one shard, record its tensors in ``weight_map``, return its bytes."""
    name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
    save_file(tensors, str(staging / name), metadata={"format": "pt"})
    weight_map.update({key: name for key in tensors})
    return sum(t.numel() * t.element_size() for t in tensors.values())
