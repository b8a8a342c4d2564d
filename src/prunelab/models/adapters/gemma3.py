"""Gemma-3 text decoders (``Gemma3ForCausalLM``, model_type ``gemma3_text``).

A Gemma-3 block differs from LLaMA's where pruning can see it: four RMSNorms scaling by
``1 + weight`` (input and post-attention around the attention, pre- and post-feedforward
around the MLP), per-head q/k norms whose weights all heads share (pruning leaves them as
they are), a GeGLU MLP, sliding-window and global layers with their own rope bases, and
embeddings scaled by sqrt(hidden). Because a post-norm follows ``o_proj`` and ``down_proj``,
a sub-layer's output (what compensation keeps exact in expectation) is the projection's
output before that norm.
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.errors import UnsupportedModelError
from prunelab.models.adapters.base import (
    ADAPTERS,
    REFUSED,
    LayerAdapter,
    PrunedLayerAdapter,
    PrunedModelAdapter,
)
from prunelab.models.adapters.llama import LlamaAdapter, LlamaLayerAdapter

REFUSED["gemma3"] = (
    "this is the multimodal Gemma-3 (Gemma3ForConditionalGeneration): a SigLIP vision tower "
    "and a multimodal projector around a text decoder, with the decoder at "
    "model.language_model instead of model.layers and its settings under text_config. "
    "prunelab's Gemma-3 adapter prunes the text-only decoder (model_type 'gemma3_text', "
    "Gemma3ForCausalLM) and has no adapter for the vision tower or the projector. Use a "
    "text-only Gemma-3 checkpoint (model=gemma3_270m is one), or save the language model "
    "alone as a Gemma3ForCausalLM folder and load that with model=local.")

#: Gemma-3 text-config fields whose non-default values change the block in ways the pruned
#: model class does not reproduce, with the value it supports.
_SUPPORTED_SETTINGS = {"attention_bias": False, "attn_logit_softcapping": None,
                       "final_logit_softcapping": None, "use_bidirectional_attention": False}
_LAYER_TYPES = {"sliding_attention", "full_attention"}


class Gemma3LayerAdapter(LlamaLayerAdapter):
    """Getters for one ``Gemma3DecoderLayer``: LLaMA's module paths, Gemma's norms."""

    @property
    def mlp_norm(self) -> nn.Module:
        return self.layer.pre_feedforward_layernorm

    @property
    def attn_post_norm(self) -> nn.Module:
        return self.layer.post_attention_layernorm

    @property
    def mlp_post_norm(self) -> nn.Module:
        return self.layer.post_feedforward_layernorm

    def norm_scale(self, norm: nn.Module) -> torch.Tensor:
        return 1.0 + norm.weight.float()

    def attention_norms(self) -> dict[str, nn.Module]:
        return {"input_layernorm": self.layer.input_layernorm,
                "self_attn.q_norm": self.layer.self_attn.q_norm,
                "self_attn.k_norm": self.layer.self_attn.k_norm,
                "post_attention_layernorm": self.layer.post_attention_layernorm}

    def mlp_norms(self) -> dict[str, nn.Module]:
        return {"pre_feedforward_layernorm": self.layer.pre_feedforward_layernorm,
                "post_feedforward_layernorm": self.layer.post_feedforward_layernorm}


@ADAPTERS.register("gemma3_text")
class Gemma3Adapter(LlamaAdapter):
    """Getters for ``Gemma3ForCausalLM`` (blocks, embedding, norm and head at LLaMA's paths)."""

    layer_adapter_cls = Gemma3LayerAdapter
    pruned_model_type = "prunelab_gemma3"

    @classmethod
    def check_config(cls, config) -> None:
        problems = [f"{name}={getattr(config, name, None)!r} (supported: {value!r})"
                    for name, value in _SUPPORTED_SETTINGS.items()
                    if getattr(config, name, value) != value]
        unknown = sorted(set(getattr(config, "layer_types", None) or []) - _LAYER_TYPES)
        if unknown:
            problems.append(f"layer_types {unknown} (supported: {sorted(_LAYER_TYPES)})")
        if problems:
            raise UnsupportedModelError(
                f"This Gemma-3 variant has settings the pruned Gemma-3 model does not "
                f"reproduce: {'; '.join(problems)}. Add them to "
                "prunelab/models/pruned/modeling_prunelab_gemma3.py and the Gemma-3 adapter.")


class PrunelabGemma3LayerAdapter(PrunedLayerAdapter, Gemma3LayerAdapter):
    """A block of ``PrunelabGemma3ForCausalLM``.

    Compensation goes where it is exact in FLAP's sense, before the post-norm: into
    ``o_proj`` / ``down_proj``'s bias. A wholly removed sub-layer adds a constant, the source
    block's post-norm of its bias, computed once here so the block runs nothing of it.
    """

    def set_compensation(self, source: LayerAdapter, attention: torch.Tensor | None,
                         mlp: torch.Tensor | None) -> None:
        for present, projection, constant, post_norm, value in (
                (self.has_attention, "o_proj", self.layer.attn_out_bias,
                 source.attn_post_norm, attention),
                (self.has_mlp, "down_proj", self.layer.mlp_out_bias,
                 source.mlp_post_norm, mlp)):
            if value is None:
                continue
            if present:
                getattr(self, projection).bias.data.copy_(value)
            elif constant is not None:
                constant.data.copy_(source.apply_norm(post_norm, value.to(constant.dtype)))


@ADAPTERS.register("prunelab_gemma3")
class PrunelabGemma3Adapter(PrunedModelAdapter, Gemma3Adapter):
    """Models produced by prunelab's surgery from Gemma-3 (``PrunelabGemma3ForCausalLM``)."""

    layer_adapter_cls = PrunelabGemma3LayerAdapter
