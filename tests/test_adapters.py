"""Adapter contract, checked on a tiny model of every supported architecture."""

from __future__ import annotations

import pytest
import torch

from prunelab.models.adapters import ADAPTERS, adapter_for
from prunelab.models.tiny import random_model

ARCHITECTURES = {
    "llama_mha": {"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 4},
    "llama_gqa": {"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 2},
    "mistral": {"model_type": "mistral", "num_attention_heads": 4, "num_key_value_heads": 2},
    "qwen2": {"model_type": "qwen2", "num_attention_heads": 4, "num_key_value_heads": 2},
    "gemma3": {"model_type": "gemma3_text", "num_attention_heads": 4, "num_key_value_heads": 1,
               "head_dim": 8},
}


@pytest.fixture(params=sorted(ARCHITECTURES))
def model(request):
    fields = {"hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
              **ARCHITECTURES[request.param]}
    return random_model(fields, seed=0).eval()


def test_registry_covers_required_families():
    assert {"llama", "mistral", "qwen2", "gemma3_text"} <= set(ADAPTERS.names())


def test_geometry_from_weights_matches_config(model):
    adapter = adapter_for(model)
    cfg = model.config
    assert len(adapter.layers) == cfg.num_hidden_layers
    for layer in adapter.layers:
        g = layer.geometry
        assert (g.hidden_size, g.num_heads, g.num_kv_heads, g.intermediate_size) == (
            cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size)
        assert g.head_dim * g.num_heads == layer.q_proj.out_features


def test_hook_points_see_A_and_a(model):
    """o_proj's input is the per-head attention output A; down_proj's is act(gate)*up."""
    adapter = adapter_for(model)
    layer = adapter.layers[0]
    seen = {}
    handles = [
        layer.o_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("A", i[0])),
        layer.down_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("a", i[0])),
        layer.mlp_norm.register_forward_hook(lambda m, i, o: seen.__setitem__("n2", o)),
    ]
    with torch.no_grad():
        model(torch.randint(0, 257, (2, 7)))
    for h in handles:
        h.remove()
    assert seen["A"].shape[-1] == layer.geometry.num_heads * layer.geometry.head_dim
    expected_a = layer.activation(layer.gate_proj(seen["n2"])) * layer.up_proj(seen["n2"])
    torch.testing.assert_close(seen["a"], expected_a)


def test_parameter_counts(model):
    adapter = adapter_for(model)
    linears = [lin for layer in adapter.layers for lin in layer.projections().values()]
    assert adapter.prunable_parameter_count() == sum(
        p.numel() for lin in linears for p in lin.parameters())
    assert adapter.total_parameter_count() == sum(p.numel() for p in model.parameters())
