"""A structurally pruned Gemma-3 text decoder (self-contained: torch + transformers only).

Each block keeps its own query heads, KV heads and MLP channels (``modeling_prunelab.py``'s
attention and MLP, whose per-layer geometry this reuses) with Gemma-3's four norms, per-head
q/k norms, GeGLU MLP and sliding-window / global layers. FLAP's compensation is the
``o_proj`` / ``down_proj`` bias, before the post-norm; a sub-layer that lost every unit is
absent, and the block adds only the constant its post-norm made of that bias (no norm,
projection or attention runs for it). Copied with ``configuration_prunelab_gemma3.py`` and the
two LLaMA files next to every saved pruned Gemma-3 model for ``trust_remote_code=True``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.gemma3.modeling_gemma3 import (
    Gemma3ForCausalLM,
    Gemma3PreTrainedModel,
    Gemma3RMSNorm,
    Gemma3RotaryEmbedding,
    Gemma3TextModel,
    Gemma3TextScaledWordEmbedding,
)

from .configuration_prunelab_gemma3 import PrunelabGemma3Config
from .modeling_prunelab import PrunelabAttention, PrunelabMLP


class PrunelabGemma3Attention(PrunelabAttention):
    """Gemma-3 attention over any kept heads: q/k norms, its own scale, sliding window."""

    def __init__(self, config: PrunelabGemma3Config, layer_idx: int):
        super().__init__(config, layer_idx, layer_idx, qkv_bias=False,
                         o_proj_bias=config.attention_compensation[layer_idx])
        self.scaling = config.query_pre_attn_scalar**-0.5
        sliding = config.layer_types[layer_idx] == "sliding_attention"
        self.sliding_window = config.sliding_window if sliding else None
        self.q_norm = Gemma3RMSNorm(config.head_dim, eps=config.rms_norm_eps)
        self.k_norm = Gemma3RMSNorm(config.head_dim, eps=config.rms_norm_eps)

    def normalize_qk(self, query, key):
        return self.q_norm(query), self.k_norm(key)

    def interface_kwargs(self) -> dict:
        return {"sliding_window": self.sliding_window}


class PrunelabGemma3DecoderLayer(GradientCheckpointingLayer):
    """A Gemma-3 block whose sub-layers may be narrower or absent."""

    def __init__(self, config: PrunelabGemma3Config, layer_idx: int):
        super().__init__()
        hidden, eps = config.hidden_size, config.rms_norm_eps
        width = config.layer_intermediate_sizes[layer_idx]
        attention = bool(config.layer_kv_map[layer_idx])
        attn_comp = config.attention_compensation[layer_idx]
        mlp_comp = config.mlp_compensation[layer_idx]

        def norm():
            return Gemma3RMSNorm(hidden, eps=eps)

        self.input_layernorm = norm() if attention else None
        self.self_attn = PrunelabGemma3Attention(config, layer_idx) if attention else None
        self.post_attention_layernorm = norm() if attention else None
        self.pre_feedforward_layernorm = norm() if width else None
        self.mlp = PrunelabMLP(config, width, bias=False, down_bias=mlp_comp,
                               act_fn=ACT2FN[config.hidden_activation]) if width else None
        self.post_feedforward_layernorm = norm() if width else None
        self.attn_out_bias = nn.Parameter(torch.zeros(hidden)) \
            if attn_comp and not attention else None
        self.mlp_out_bias = nn.Parameter(torch.zeros(hidden)) if mlp_comp and not width \
            else None

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None,
                position_ids=None, cache=None, **kwargs):
        if self.self_attn is not None:
            attn, _ = self.self_attn(self.input_layernorm(hidden_states),
                                     position_embeddings=position_embeddings,
                                     attention_mask=attention_mask, cache=cache, **kwargs)
            hidden_states = hidden_states + self.post_attention_layernorm(attn)
        elif self.attn_out_bias is not None:
            hidden_states = hidden_states + self.attn_out_bias
        if self.mlp is not None:
            out = self.mlp(self.pre_feedforward_layernorm(hidden_states))
            hidden_states = hidden_states + self.post_feedforward_layernorm(out)
        elif self.mlp_out_bias is not None:
            hidden_states = hidden_states + self.mlp_out_bias
        return hidden_states


class PrunelabGemma3PreTrainedModel(Gemma3PreTrainedModel):
    """Shared settings of the pruned Gemma-3 classes."""

    config_class = PrunelabGemma3Config
    config: PrunelabGemma3Config
    input_modalities = ("text",)
    _no_split_modules = ["PrunelabGemma3DecoderLayer"]
    _can_record_outputs = {"hidden_states": PrunelabGemma3DecoderLayer,
                           "attentions": PrunelabGemma3Attention}


class PrunelabGemma3TextModel(PrunelabGemma3PreTrainedModel, Gemma3TextModel):
    """Gemma3TextModel's forward over pruned blocks (built without dense ones first)."""

    def __init__(self, config: PrunelabGemma3Config):
        PrunelabGemma3PreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = Gemma3TextScaledWordEmbedding(
            config.vocab_size, config.hidden_size, self.padding_idx,
            embed_scale=config.hidden_size**0.5)
        self.layers = nn.ModuleList([PrunelabGemma3DecoderLayer(config, i)
                                     for i in range(config.num_hidden_layers)])
        self.norm = Gemma3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Gemma3RotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()


class PrunelabGemma3ForCausalLM(PrunelabGemma3PreTrainedModel, Gemma3ForCausalLM):
    """Causal LM head over :class:`PrunelabGemma3TextModel`."""

    def __init__(self, config: PrunelabGemma3Config):
        PrunelabGemma3PreTrainedModel.__init__(self, config)
        self.model = PrunelabGemma3TextModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


__all__ = ["PrunelabGemma3ForCausalLM", "PrunelabGemma3PreTrainedModel",
           "PrunelabGemma3TextModel"]
