"""Physical removal of heads and channels, with FLAP bias compensation.

:func:`prune_model` turns any adapter-supported model plus a :class:`PruningPlan` into a model
of its pruned family (``PrunelabForCausalLM`` for LLaMA-style sources,
``PrunelabGemma3ForCausalLM`` for Gemma-3) whose weights are slices of the original.
:func:`mask_block` applies the same plan to the original architecture by zeroing the removed
input columns of ``o_proj`` / ``down_proj`` and adding the same biases; the two must give the
same logits (METHODS.md "Surgery"), which the tests check.

Bias compensation (FLAP): for removed input channels ``R`` of an output projection ``W`` with
calibration means ``mu``, the sub-layer's output gains ``W[:, R] @ mu[R]``, so that its
expected output equals the original's (before any post-norm: the adapter places it).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.initialization import no_init_weights

from prunelab.allocator import release_file_pages
from prunelab.atomic import atomic_folder
from prunelab.errors import PrunelabError
from prunelab.models.adapters import LayerAdapter, ModelAdapter, PrunedLayerAdapter, adapter_for
from prunelab.models.plan import PLAN_FILE, LayerPlan, PruningPlan, channel_index
from prunelab.models.pruned import (
    FAMILIES,
    PrunelabConfig,
    PrunelabGemma3Config,
    write_remote_code,
)

#: Per layer, the calibration means of the o_proj input (``A``) and down_proj input (``a``);
#: None disables compensation for that sub-layer.
Means = list[tuple[torch.Tensor | None, torch.Tensor | None]]


def compensation_bias(weight: torch.Tensor, kept: torch.Tensor,
                      mean: torch.Tensor | None) -> torch.Tensor | None:
    """``W[:, R] @ mu[R]`` over the removed columns ``R``, or None when nothing is removed."""
    if mean is None:
        return None
    removed = torch.ones(weight.shape[1], dtype=torch.bool)
    removed[kept] = False
    if not removed.any():
        return None
    return weight[:, removed].double() @ mean[removed].double().to(weight.device)


def _kv_map(layer: LayerAdapter, heads: list[int]) -> tuple[list[int], list[int]]:
    """Kept KV heads and, per kept query head, its index among them."""
    kv_of = layer.kv_head_of()
    kept_kv = sorted({kv_of[h] for h in heads})
    position = {kv: i for i, kv in enumerate(kept_kv)}
    return kept_kv, [position[kv_of[h]] for h in heads]


def pruned_config(adapter: ModelAdapter, plan: PruningPlan,
                  means: Means | None) -> PretrainedConfig:
    """The config of the pruned model: the source's fields plus per-layer geometry."""
    layers = adapter.layers
    kv_maps, widths, attn_comp, mlp_comp = [], [], [], []
    for i, (layer, keep) in enumerate(zip(layers, plan.layers)):
        kv_maps.append(_kv_map(layer, keep.heads)[1])
        widths.append(len(keep.channels))
        g = layer.geometry
        attn_mean, mlp_mean = means[i] if means else (None, None)
        attn_comp.append(attn_mean is not None and len(keep.heads) < g.num_heads)
        mlp_comp.append(mlp_mean is not None and len(keep.channels) < g.intermediate_size)
    src = adapter.config
    geometry = {"layer_kv_map": kv_maps, "layer_intermediate_sizes": widths,
                "attention_compensation": attn_comp, "mlp_compensation": mlp_comp,
                "source_model_type": getattr(src, "source_model_type", None) or src.model_type}
    return _CONFIG_BUILDERS[adapter.pruned_model_type](adapter, geometry)


def _llama_config(adapter: ModelAdapter, geometry: dict) -> PrunelabConfig:
    """LLaMA, Mistral and Qwen2 sources: the fields the pruned LLaMA-style decoder reads."""
    src = adapter.config
    if getattr(src, "hidden_act", "silu") != "silu":
        raise PrunelabError(f"Surgery supports gated SiLU MLPs; {src.model_type} uses "
                            f"{src.hidden_act!r}. Add support in prunelab/models/pruned.")
    context = int(src.max_position_embeddings)
    window = getattr(src, "sliding_window", None)
    if window and getattr(src, "use_sliding_window", True):
        context = min(context, int(window))  # full attention is exact up to the window
    first = next((layer for layer in adapter.layers if layer.has_attention), None)
    return PrunelabConfig(
        vocab_size=src.vocab_size, hidden_size=src.hidden_size,
        intermediate_size=src.intermediate_size, num_hidden_layers=src.num_hidden_layers,
        num_attention_heads=src.num_attention_heads,
        num_key_value_heads=getattr(src, "num_key_value_heads", None) or src.num_attention_heads,
        head_dim=adapter.head_dim, max_position_embeddings=context,
        rms_norm_eps=src.rms_norm_eps, rope_parameters=getattr(src, "rope_parameters", None),
        tie_word_embeddings=bool(getattr(src, "tie_word_embeddings", False)),
        pad_token_id=src.pad_token_id, bos_token_id=src.bos_token_id,
        eos_token_id=src.eos_token_id,
        mlp_bias=bool(getattr(src, "mlp_bias", False)),
        qkv_bias=first is not None and first.q_proj.bias is not None,
        o_proj_bias=first is not None and first.o_proj.bias is not None,
        architectures=["PrunelabForCausalLM"], **geometry,
    )


#: Source config fields that describe the file, not the model: not carried into the pruned one.
_NOT_CARRIED = ("model_type", "architectures", "auto_map", "quantization_config",
                "transformers_version", "_name_or_path", "dtype")


def _gemma3_config(adapter: ModelAdapter, geometry: dict) -> PrunelabGemma3Config:
    """Gemma-3 sources: every Gemma3TextConfig field (rope bases, window, pattern) carried."""
    fields = {key: value for key, value in adapter.config.to_dict().items()
              if key not in _NOT_CARRIED}
    return PrunelabGemma3Config(**{**fields, **geometry,
                                   "architectures": ["PrunelabGemma3ForCausalLM"]})


#: Per pruned family (the adapter's ``pruned_model_type``), its config from the source's.
_CONFIG_BUILDERS = {"prunelab_llama": _llama_config, "prunelab_gemma3": _gemma3_config}


def _copy_linear(dst: nn.Linear, src: nn.Linear, rows=None, cols=None) -> None:
    weight = src.weight
    if rows is not None:
        weight = weight.index_select(0, rows.to(weight.device))
    if cols is not None:
        weight = weight.index_select(1, cols.to(weight.device))
    dst.weight.data.copy_(weight)
    if src.bias is not None:
        bias = src.bias if rows is None else src.bias.index_select(0, rows.to(src.bias.device))
        dst.bias.data.copy_(bias)


@torch.no_grad()
def prune_model(model: nn.Module, adapter: ModelAdapter, plan: PruningPlan,
                means: Means | None = None, release_source: bool = False) -> nn.Module:
    """A new pruned model holding slices of ``model``'s weights.

    ``model`` is left intact unless ``release_source``: then each source block is freed
    (moved to the meta device, its pages unmapped when it was read memory-mapped from its
    file) as soon as its pruned copy is made, and the embeddings, final norm and head are
    shared rather than copied, so surgery needs the weights plus one block instead of two
    copies of the model. The pipeline does this; ``model`` is unusable after.
    """
    if len(plan.layers) != len(adapter.layers):
        raise RuntimeError(f"plan has {len(plan.layers)} layers, model {len(adapter.layers)}")
    config = pruned_config(adapter, plan, means)
    ref = next(model.parameters())
    with no_init_weights():  # untouched pages: memory is committed as filled
        pruned = FAMILIES[config.model_type].model_cls(config)
    pruned.to(dtype=ref.dtype)
    target = adapter_for(pruned)
    for i, (dst, layer, keep) in enumerate(zip(target.layers, adapter.layers, plan.layers)):
        fill_pruned_block(dst, layer, keep, means[i] if means else (None, None))
        if release_source:
            release_file_pages(adapter.decoder_layers[i].parameters())
            adapter.decoder_layers[i].to("meta")
    shared = [(target.embed_tokens, adapter.embed_tokens), (target.final_norm, adapter.final_norm)]
    if not config.tie_word_embeddings:
        shared.append((target.lm_head, adapter.lm_head))
    for dst, src in shared:
        if release_source:
            dst.weight = src.weight
        else:
            dst.weight.data.copy_(src.weight)
    pruned.tie_weights()
    return pruned.to(ref.device).eval()


def fill_pruned_block(dst: PrunedLayerAdapter, src: LayerAdapter, keep: LayerPlan, means) -> None:
    """Copy the kept slices of ``src`` into the pruned block ``dst``, with compensation."""
    attn_mean, mlp_mean = means
    channels = torch.tensor(keep.channels, dtype=torch.long)
    a_cols = channel_index(keep.heads, src.head_dim)
    if dst.has_attention:
        kept_kv, _ = _kv_map(src, keep.heads)
        kv_rows = channel_index(kept_kv, src.head_dim)
        _copy_linear(dst.q_proj, src.q_proj, rows=channel_index(keep.heads, src.head_dim))
        _copy_linear(dst.k_proj, src.k_proj, rows=kv_rows)
        _copy_linear(dst.v_proj, src.v_proj, rows=kv_rows)
        _copy_linear(dst.o_proj, src.o_proj, cols=a_cols)
        _copy_norms(dst.attention_norms(), src.attention_norms())
    if dst.has_mlp:
        _copy_linear(dst.gate_proj, src.gate_proj, rows=channels)
        _copy_linear(dst.up_proj, src.up_proj, rows=channels)
        _copy_linear(dst.down_proj, src.down_proj, cols=channels)
        _copy_norms(dst.mlp_norms(), src.mlp_norms())
    dst.set_compensation(src, compensation_bias(src.o_proj.weight, a_cols, attn_mean),
                         compensation_bias(src.down_proj.weight, channels, mlp_mean))


def _copy_norms(dst: dict[str, nn.Module], src: dict[str, nn.Module]) -> None:
    for name, norm in dst.items():
        norm.weight.data.copy_(src[name].weight)


@torch.no_grad()
def mask_block(layer: LayerAdapter, keep: LayerPlan,
               means: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)) -> None:
    """Apply one block's plan in place: zero removed columns, add compensation biases.

    Zeroing the o_proj / down_proj input columns removes a head's or channel's contribution
    exactly (a KV head whose query heads are all masked then contributes nothing either), so
    a masked block computes what the pruned one will: sequential methods calibrate later
    blocks on it, and tests compare pruned models with masked ones.
    """
    attn_mean, mlp_mean = means
    for proj, kept, mean in ((layer.o_proj, channel_index(keep.heads, layer.head_dim), attn_mean),
                             (layer.down_proj, torch.tensor(keep.channels, dtype=torch.long),
                              mlp_mean)):
        bias = compensation_bias(proj.weight, kept, mean)
        mask = torch.zeros(proj.in_features, dtype=torch.bool, device=proj.weight.device)
        mask[kept.to(mask.device)] = True
        proj.weight[:, ~mask] = 0
        if bias is not None:
            if proj.bias is None:
                proj.bias = nn.Parameter(torch.zeros(proj.out_features, dtype=proj.weight.dtype,
                                                     device=proj.weight.device))
            proj.bias += bias.to(proj.bias.dtype)


def save_pruned(model: nn.Module, tokenizer, folder: Path, plan: PruningPlan,
                record: dict | None = None) -> Path:
    """Save a pruned model as a Hugging Face folder (safetensors + remote code + plan).

    It reloads with ``AutoModelForCausalLM.from_pretrained(folder)`` after ``import prunelab``
    and, in a process without prunelab, with ``trust_remote_code=True``. The folder is
    written under a temporary name and renamed: it is complete or absent, never partial.
    """
    folder = Path(folder)
    model_type = model.config.model_type
    model.config.auto_map = FAMILIES[model_type].auto_map
    with atomic_folder(folder) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        write_beside_weights(staging, model_type, tokenizer, plan, record)
    return folder


def write_beside_weights(staging: Path, model_type: str, tokenizer, plan: PruningPlan,
                         record: dict | None) -> None:
    """What a pruned model folder holds besides config and weights: code, tokenizer, plan."""
    write_remote_code(staging, model_type)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    (staging / PLAN_FILE).write_text(json.dumps({**plan.to_dict(), **(record or {})},
                                                indent=1))
