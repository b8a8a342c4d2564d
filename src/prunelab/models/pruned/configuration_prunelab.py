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
        layers = self.num_hidden_layers
        if self.layer_kv_map is None:
            q_per_kv = self.num_attention_heads // (self.num_key_value_heads or
                                                    self.num_attention_heads)
            self.layer_kv_map = [[h // q_per_kv for h in range(self.num_attention_heads)]
                                 for _ in range(layers)]
        if self.layer_intermediate_sizes is None:
            self.layer_intermediate_sizes = [self.intermediate_size] * layers
        if self.attention_compensation is None:
            self.attention_compensation = [False] * layers
        if self.mlp_compensation is None:
            self.mlp_compensation = [False] * layers
        super().__post_init__(**kwargs)


__all__ = ["PrunelabConfig"]
