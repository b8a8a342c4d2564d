"""A structurally pruned LLaMA-style decoder (self-contained: torch + transformers only).

Every block may keep its own number of query heads, KV heads (with uneven query heads per KV
head) and MLP channels, and may add a compensation bias after its attention or MLP output.
A sub-layer that lost every unit is absent: the block then adds only its bias and runs no
norm, projection or attention for it. Uneven GQA groups are served by one ``index_select`` of
the cached keys/values, never a per-head Python loop. This file is copied next to every saved
pruned model so that plain transformers can load it with ``trust_remote_code=True``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaForCausalLM,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from .configuration_prunelab import PrunelabConfig


def _cache_indices(config: PrunelabConfig) -> list[int | None]:
    """KV-cache slot per layer: attention layers are numbered densely, removed ones get None.

    Dense numbering keeps ``cache.get_seq_length()`` (slot 0) meaningful even when the first
    block lost its attention.
    """
    slots, nxt = [], 0
    for kv_map in config.layer_kv_map:
        slots.append(nxt if kv_map else None)
        nxt += bool(kv_map)
    return slots


class PrunelabAttention(nn.Module):
    """Attention with any number of kept query heads mapped onto kept KV heads."""

    def __init__(self, config: PrunelabConfig, layer_idx: int, cache_idx: int, qkv_bias: bool,
                 o_proj_bias: bool):
        super().__init__()
        kv_map = list(config.layer_kv_map[layer_idx])
        self.config = config
        self.layer_idx = cache_idx  # cache slot; the attention interfaces read layer_idx
        self.head_dim = config.head_dim
        self.num_heads = len(kv_map)
        self.num_kv_heads = max(kv_map) + 1
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        counts = [kv_map.count(kv) for kv in range(self.num_kv_heads)]
        regular = len(set(counts)) == 1 and kv_map == sorted(kv_map)
        # Regular groups use the interfaces' own repeat; uneven ones gather once per call.
        self.num_key_value_groups = counts[0] if regular else 1
        self.kv_map = kv_map
        self.uneven = not regular
        self._kv_index: torch.Tensor | None = None  # built lazily on the keys' device
        hidden, hd = config.hidden_size, self.head_dim
        self.q_proj = nn.Linear(hidden, self.num_heads * hd, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * hd, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * hd, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * hd, hidden, bias=o_proj_bias)

    def normalize_qk(self, query: torch.Tensor, key: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head query/key norms before rotary embedding (none in LLaMA)."""
        return query, key

    def interface_kwargs(self) -> dict:
        """Extra keywords for the attention function (none in LLaMA)."""
        return {}

    def forward(self, hidden_states, position_embeddings, attention_mask=None, cache=None,
                **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        query, key = self.normalize_qk(query, key)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        if self.uneven:
            if self._kv_index is None or self._kv_index.device != key.device:
                self._kv_index = torch.tensor(self.kv_map, device=key.device)
            key = key.index_select(1, self._kv_index)
            value = value.index_select(1, self._kv_index)
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                          eager_attention_forward)
        output, weights = interface(self, query, key, value, attention_mask,
                                    dropout=0.0 if not self.training else self.attention_dropout,
                                    scaling=self.scaling, **self.interface_kwargs(), **kwargs)
        output = output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(output), weights


class PrunelabMLP(nn.Module):
    """Gated MLP of any width (SiLU unless another activation is given)."""

    def __init__(self, config: PrunelabConfig, width: int, bias: bool, down_bias: bool,
                 act_fn: nn.Module | None = None):
        super().__init__()
        hidden = config.hidden_size
        self.gate_proj = nn.Linear(hidden, width, bias=bias)
        self.up_proj = nn.Linear(hidden, width, bias=bias)
        self.down_proj = nn.Linear(width, hidden, bias=down_bias)
        self.act_fn = nn.SiLU() if act_fn is None else act_fn

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class PrunelabDecoderLayer(GradientCheckpointingLayer):
    """A pre-norm block whose sub-layers may be narrower, absent, or followed by a bias.

    A :class:`GradientCheckpointingLayer`, so ``gradient_checkpointing_enable()`` (recovery's
    ``gradient_checkpointing``) recomputes it in the backward pass instead of storing it.
    """

    def __init__(self, config: PrunelabConfig, layer_idx: int, cache_idx: int | None):
        super().__init__()
        hidden, eps = config.hidden_size, config.rms_norm_eps
        has_attention = bool(config.layer_kv_map[layer_idx])
        width = config.layer_intermediate_sizes[layer_idx]
        self.input_layernorm = LlamaRMSNorm(hidden, eps=eps) if has_attention else None
        self.self_attn = PrunelabAttention(config, layer_idx, cache_idx, config.qkv_bias,
                                           config.o_proj_bias) if has_attention else None
        self.post_attention_layernorm = LlamaRMSNorm(hidden, eps=eps) if width else None
        self.mlp = PrunelabMLP(config, width, config.mlp_bias, config.mlp_bias) if width \
            else None
        self.attn_out_bias = nn.Parameter(torch.zeros(hidden)) \
            if config.attention_compensation[layer_idx] else None
        self.mlp_out_bias = nn.Parameter(torch.zeros(hidden)) \
            if config.mlp_compensation[layer_idx] else None

    def forward(self, hidden_states, attention_mask=None, position_ids=None, cache=None,
                use_cache=False, position_embeddings=None, **kwargs):
        kwargs.pop("past_key_values", None)
        if self.self_attn is not None:
            attn, _ = self.self_attn(self.input_layernorm(hidden_states),
                                     position_embeddings=position_embeddings,
                                     attention_mask=attention_mask, cache=cache, **kwargs)
            if self.attn_out_bias is not None:
                attn = attn + self.attn_out_bias
            hidden_states = hidden_states + attn
        elif self.attn_out_bias is not None:
            hidden_states = hidden_states + self.attn_out_bias
        if self.mlp is not None:
            out = self.mlp(self.post_attention_layernorm(hidden_states))
            if self.mlp_out_bias is not None:
                out = out + self.mlp_out_bias
            hidden_states = hidden_states + out
        elif self.mlp_out_bias is not None:
            hidden_states = hidden_states + self.mlp_out_bias
        return hidden_states


class PrunelabPreTrainedModel(LlamaPreTrainedModel):
    """Shared settings of the pruned model classes."""

    config_class = PrunelabConfig
    config: PrunelabConfig
    _no_split_modules = ["PrunelabDecoderLayer"]
    _can_record_outputs = {"hidden_states": PrunelabDecoderLayer,
                           "attentions": PrunelabAttention}


class PrunelabModel(PrunelabPreTrainedModel, LlamaModel):
    """LlamaModel's forward over pruned blocks (built without creating dense ones first)."""

    def __init__(self, config: PrunelabConfig):
        PrunelabPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        slots = _cache_indices(config)
        self.layers = nn.ModuleList(
            [PrunelabDecoderLayer(config, i, slots[i]) for i in range(config.num_hidden_layers)]
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()


class PrunelabForCausalLM(PrunelabPreTrainedModel, LlamaForCausalLM):
    """Causal LM head over :class:`PrunelabModel`."""

    def __init__(self, config: PrunelabConfig):
        PrunelabPreTrainedModel.__init__(self, config)
        self.model = PrunelabModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


__all__ = ["PrunelabForCausalLM", "PrunelabModel", "PrunelabPreTrainedModel"]
