"""Config of a structurally pruned LLaMA-style model (self-contained: torch + transformers only).

This file is copied next to every saved pruned model so that plain transformers can load it
with ``trust_remote_code=True``. Per-layer geometry lives in three lists:

- ``layer_kv_map[l]``: for each kept query head of layer ``l`` (in order), the index of the
  kept KV head it attends with. An empty list means the attention sub-layer was removed.
  Query heads per KV head may differ (GQA-aware pruning).
- ``layer_intermediate_sizes[l]``: kept MLP channels; 0 means the MLP sub-layer was removed.
- ``attention_compensation[l]`` / ``mlp_compensation[l]``: whether the layer adds a bias
  after its attention / MLP output (FLAP-style bias compensation, METHODS.md).
"""

from __future__ import annotations

from transformers import LlamaConfig


class PrunelabConfig(LlamaConfig):
    """A LlamaConfig plus the per-layer geometry of a pruned model."""

    model_type = "prunelab_llama"

    layer_kv_map: list | None = None
    layer_intermediate_sizes: list | None = None
    attention_compensation: list | None = None
    mlp_compensation: list | None = None
    qkv_bias: bool = False
    o_proj_bias: bool = False
    source_model_type: str | None = None

    def __post_init__(self, **kwargs):
        fill_layer_geometry(self)
        super().__post_init__(**kwargs)


def fill_layer_geometry(config) -> None:
    """Per-layer geometry of the unpruned model wherever a config leaves it unset."""
    layers = config.num_hidden_layers
    if config.layer_kv_map is None:
        q_per_kv = config.num_attention_heads // (config.num_key_value_heads or
                                                  config.num_attention_heads)
        config.layer_kv_map = [[h // q_per_kv for h in range(config.num_attention_heads)]
                               for _ in range(layers)]
    if config.layer_intermediate_sizes is None:
        config.layer_intermediate_sizes = [config.intermediate_size] * layers
    if config.attention_compensation is None:
        config.attention_compensation = [False] * layers
    if config.mlp_compensation is None:
        config.mlp_compensation = [False] * layers


__all__ = ["PrunelabConfig", "fill_layer_geometry"]
