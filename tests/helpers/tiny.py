"""Tiny random models of each supported attention layout."""

from __future__ import annotations

import torch

from prunelab.models.tiny import random_model

#: Gemma-3 blocks alternate sliding-window (8) and global layers, as the real model's do.
_GEMMA3 = {"model_type": "gemma3_text", "head_dim": 12, "query_pre_attn_scalar": 12,
           "sliding_window": 8, "sliding_window_pattern": 2}

LAYOUTS = {
    "mha": {"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 4},
    "gqa": {"model_type": "llama", "num_attention_heads": 6, "num_key_value_heads": 2},
    "qwen2": {"model_type": "qwen2", "num_attention_heads": 4, "num_key_value_heads": 2},
    "mistral": {"model_type": "mistral", "num_attention_heads": 4, "num_key_value_heads": 2},
    "gemma3": {**_GEMMA3, "num_attention_heads": 4, "num_key_value_heads": 1},
    "gemma3_gqa": {**_GEMMA3, "num_attention_heads": 4, "num_key_value_heads": 2},
}


def tiny_model(layout: str, layers: int = 3, hidden: int = 48, ffn: int = 40, seed: int = 0,
               init_std: float = 0.02):
    """A random model in eval mode (byte vocabulary); a larger ``init_std`` gives larger logits.

    Gemma's norms start at zero (a scale of ``1 + 0``); they are randomised so that tests
    tell ``weight`` from ``1 + weight``.
    """
    fields = {"hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
              "max_position_embeddings": 256, "initializer_range": init_std, **LAYOUTS[layout]}
    model = random_model(fields, seed=seed).eval()
    if fields["model_type"] == "gemma3_text":
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if name.endswith("norm.weight"):
                    weight.copy_(0.3 * torch.randn(weight.shape, generator=g))
    return model
