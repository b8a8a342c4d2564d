"""LLM-Pruner: Taylor group importance by hand, its allocation, and its bad input."""

from __future__ import annotations

import pytest
import torch

from prunelab import pipeline
from prunelab.errors import PrunelabError
from prunelab.methods.llm_pruner import LLMPruner, LLMPrunerParams
from prunelab.models.adapters import adapter_for
from tests.helpers.tiny import tiny_model


def _gradients(adapter):
    torch.manual_seed(3)
    return [{name: torch.randn_like(linear.weight) for name, linear in layer.projections().items()}
            for layer in adapter.layers]


def _hand_scores(layer, grads, taylor):
    """Loops over heads and channels, one weight slice at a time."""
    g = layer.geometry
    hd = g.head_dim

    def crit(weight, grad):
        s = (weight.detach().double() * grad.double())
        return s.abs().sum().item() if taylor == "element1" else s.sum().abs().item()

    def row_sum(name, rows):
        w, gr = getattr(layer, name).weight, grads[name]
        return sum(crit(w[r], gr[r]) for r in rows)

    def col_sum(name, cols):
        w, gr = getattr(layer, name).weight, grads[name]
        return sum(crit(w[:, c], gr[:, c]) for c in cols)

    per_kv = g.num_heads // g.num_kv_heads
    heads = []
    for h in range(g.num_heads):
        rows = range(h * hd, (h + 1) * hd)
        kv_rows = range((h // per_kv) * hd, (h // per_kv + 1) * hd)
        kv = row_sum("k_proj", kv_rows) + row_sum("v_proj", kv_rows)
        heads.append(row_sum("q_proj", rows) + col_sum("o_proj", rows) + kv / per_kv)
    channels = [row_sum("gate_proj", [c]) + row_sum("up_proj", [c]) + col_sum("down_proj", [c])
                for c in range(g.intermediate_size)]
    return torch.tensor(heads, dtype=torch.float64), torch.tensor(channels, dtype=torch.float64)


@pytest.mark.parametrize("layout", ["mha", "gqa"])
@pytest.mark.parametrize("taylor", ["element1", "vector"])
def test_taylor_importance_equals_a_hand_computation(layout, taylor):
    adapter = adapter_for(tiny_model(layout))
    grads = _gradients(adapter)
    method = LLMPruner(LLMPrunerParams(taylor))
    for index, layer in enumerate(adapter.layers):
        scores = method.score_block(index, layer, {"gradients": grads[index]}, False)
        heads, channels = _hand_scores(layer, grads[index], taylor)
        assert torch.allclose(scores.heads, heads, rtol=1e-10)
        assert torch.allclose(scores.channels, channels, rtol=1e-10)


def _tiny(make_cfg, tmp_path, *overrides):
    return make_cfg("model=tiny_llama", "benchmark=smoke", "logger=none", "method=llm_pruner",
                    f"paths.cache_dir={tmp_path / 'cache'}", *overrides)


def test_llm_pruner_prunes_the_same_ratio_in_every_open_block(make_cfg, tmp_path):
    result = pipeline.run(_tiny(make_cfg, tmp_path, "schedule.protect_first=1",
                                "schedule.protect_last=1", "schedule.ratio=0.2"))
    before, after = result.layers_before, result.layers
    assert [a == b for a, b in zip(after, before)] == [True, False, True]  # only block 1
    assert result.pruning.ratio_achieved == pytest.approx(0.2, abs=0.02)
    assert "gradients" in result.pruning.wall_time_s
    assert "gradients" in result.pruning.peak_memory_bytes


def test_more_protected_blocks_than_blocks_is_refused_before_calibrating(make_cfg, tmp_path):
    # conf/schedule/llm_pruner.yaml protects 4 + 2 blocks; tiny_llama has 3
    with pytest.raises(PrunelabError, match="protect 6 blocks, but the model has 3"):
        pipeline.run(_tiny(make_cfg, tmp_path))
    assert not (tmp_path / "cache" / "statistics").exists()
