"""Tiny random models of each supported attention layout."""

from __future__ import annotations

from prunelab.models.tiny import random_model

LAYOUTS = {
    "mha": {"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 4},
    "gqa": {"model_type": "llama", "num_attention_heads": 6, "num_key_value_heads": 2},
    "qwen2": {"model_type": "qwen2", "num_attention_heads": 4, "num_key_value_heads": 2},
    "mistral": {"model_type": "mistral", "num_attention_heads": 4, "num_key_value_heads": 2},
}


def tiny_model(layout: str, layers: int = 3, hidden: int = 48, ffn: int = 40, seed: int = 0,
               init_std: float = 0.02):
    """A random model in eval mode (byte vocabulary); a larger ``init_std`` gives larger logits."""
    fields = {"hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
              "max_position_embeddings": 256, "initializer_range": init_std, **LAYOUTS[layout]}
    return random_model(fields, seed=seed).eval()
