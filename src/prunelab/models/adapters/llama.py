"""LLaMA-style decoders: LLaMA (MHA and GQA), Mistral and Qwen2 share one layout.

``model.model.layers[i].self_attn.{q,k,v,o}_proj`` and ``.mlp.{gate,up,down}_proj`` with
``input_layernorm`` / ``post_attention_layernorm``; Qwen2 adds biases on q/k/v, which the
adapter need not know about (surgery slices whatever parameters a Linear has).
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.models.adapters.base import (
    ADAPTERS,
    LayerAdapter,
    ModelAdapter,
    PrunedLayerAdapter,
    PrunedModelAdapter,
)


class LlamaLayerAdapter(LayerAdapter):
    """Getters for one ``LlamaDecoderLayer``-shaped block."""

    @property
    def hidden_size(self) -> int:
        return self.layer.input_layernorm.weight.numel()

    @property
    def attention(self) -> nn.Module:
        return self.layer.self_attn

    @property
    def mlp(self) -> nn.Module:
        return self.layer.mlp

    @property
    def attn_norm(self) -> nn.Module:
        return self.layer.input_layernorm

    @property
    def mlp_norm(self) -> nn.Module:
        return self.layer.post_attention_layernorm

    def attention_norms(self) -> dict[str, nn.Module]:
        return {"input_layernorm": self.layer.input_layernorm}

    def mlp_norms(self) -> dict[str, nn.Module]:
        return {"post_attention_layernorm": self.layer.post_attention_layernorm}

    @property
    def q_proj(self) -> nn.Linear:
        return self.layer.self_attn.q_proj

    @property
    def k_proj(self) -> nn.Linear:
        return self.layer.self_attn.k_proj

    @property
    def v_proj(self) -> nn.Linear:
        return self.layer.self_attn.v_proj

    @property
    def o_proj(self) -> nn.Linear:
        return self.layer.self_attn.o_proj

    @property
    def gate_proj(self) -> nn.Linear:
        return self.layer.mlp.gate_proj

    @property
    def up_proj(self) -> nn.Linear:
        return self.layer.mlp.up_proj

    @property
    def down_proj(self) -> nn.Linear:
        return self.layer.mlp.down_proj


@ADAPTERS.register("llama", "mistral", "qwen2")
class LlamaAdapter(ModelAdapter):
    """Getters for ``*ForCausalLM`` models with the LLaMA module layout."""

    layer_adapter_cls = LlamaLayerAdapter
    pruned_model_type = "prunelab_llama"

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.model.layers

    @property
    def embed_tokens(self) -> nn.Module:
        return self.model.model.embed_tokens

    @property
    def final_norm(self) -> nn.Module:
        return self.model.model.norm

    @property
    def lm_head(self) -> nn.Module:
        return self.model.lm_head


class PrunelabLayerAdapter(PrunedLayerAdapter, LlamaLayerAdapter):
    """A block of ``PrunelabForCausalLM``: compensation is a bias after each sub-layer."""

    def set_compensation(self, source: LayerAdapter, attention: torch.Tensor | None,
                         mlp: torch.Tensor | None) -> None:
        for bias, value in ((self.layer.attn_out_bias, attention),
                            (self.layer.mlp_out_bias, mlp)):
            if bias is not None:
                bias.data.copy_(value)


@ADAPTERS.register("prunelab_llama")
class PrunelabAdapter(PrunedModelAdapter, LlamaAdapter):
    """Models produced by prunelab's surgery (``PrunelabForCausalLM``)."""

    layer_adapter_cls = PrunelabLayerAdapter
