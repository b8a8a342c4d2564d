"""ShortGPT: Block Influence by hand, whole blocks removed exactly, budgets, bad requests."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from prunelab import pipeline, pruning
from prunelab.calibration.runner import run_layerwise, run_streaming
from prunelab.config.schema import validate
from prunelab.errors import ConfigError, PrunelabError
from prunelab.methods.shortgpt import ShortGPT, block_influence
from prunelab.models.adapters import adapter_for
from prunelab.models.loading import load_model
from prunelab.models.surgery import save_pruned
from prunelab.tracking.tables import build_table
from tests.helpers.plans import mask_model
from tests.helpers.records import record
from tests.helpers.tiny import tiny_model

CPU = torch.device("cpu")
SAMPLES = torch.randint(0, 257, (6, 12), generator=torch.Generator().manual_seed(0))


def hand_influence(model, samples: torch.Tensor) -> list[float]:
    """``1 - mean cos`` from the inputs and outputs each block is seen to take and give."""
    seen = []
    hooks = [block.register_forward_hook(
        lambda _m, args, kwargs, out: seen.append((args[0] if args else kwargs["hidden_states"],
                                                   out[0] if isinstance(out, tuple) else out)),
        with_kwargs=True) for block in adapter_for(model).decoder_layers]
    with torch.no_grad():
        model(input_ids=samples, use_cache=False)
    for hook in hooks:
        hook.remove()
    return [1 - float(F.cosine_similarity(x.double(), y.double(), dim=-1).mean())
            for x, y in seen]


@pytest.mark.parametrize("engine", [run_streaming, run_layerwise])
def test_block_influence_equals_the_hand_computation(engine):
    model = tiny_model("gqa", layers=4)
    stats = engine(adapter_for(model), SAMPLES, ["block_cosine"], 4, CPU)
    expected = hand_influence(model, SAMPLES)
    assert [block_influence(s) for s in stats] == pytest.approx(expected, abs=1e-12)
    assert all(0 < value < 2 for value in expected)


def job(make_cfg, tmp_path, *overrides, model: str = "tiny_llama_gqa"):
    return make_cfg(f"model={model}", "method=shortgpt", "calibration.nsamples=8",
                    "calibration.seqlen=32", "benchmark=smoke", "logger=none",
                    "model.architecture.num_hidden_layers=4",
                    f"paths.cache_dir={tmp_path / 'cache'}", *overrides)


@pytest.mark.parametrize("model", ["tiny_llama_gqa", "tiny_gemma3"])
def test_lowest_influence_blocks_go_whole_and_the_model_equals_the_masked_one(make_cfg,
                                                                              tmp_path, model):
    run = validate(job(make_cfg, tmp_path, "method.blocks=2", model=model))
    loaded = load_model(run.model, run.paths.cache_dir)
    original = copy.deepcopy(loaded.model)
    outcome = pruning.prune(ShortGPT(run.method.params), loaded, run)
    influence = outcome.details["calibration"]["block_scores"]
    lowest = sorted(range(4), key=lambda i: influence[i])[:2]
    assert outcome.plan.removed_blocks() == sorted(lowest)
    for index, block in enumerate(loaded.model.model.layers):
        assert (block.self_attn is None and block.mlp is None) == (index in lowest)
    mask_model(adapter_for(original), outcome.plan)
    tokens = torch.randint(0, 257, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        pruned_logits = loaded.model(tokens).logits
        assert torch.allclose(pruned_logits, original(tokens).logits, atol=1e-5)
    save_pruned(loaded.model, loaded.tokenizer, tmp_path / "saved", outcome.plan)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, pruned_logits)


@pytest.mark.parametrize("ratio,blocks", [(0.2, 0), (0.3, 1), (0.5, 2), (0.74, 2), (0.75, 3)])
def test_ratio_is_met_by_whole_blocks_without_exceeding_it(make_cfg, tmp_path, ratio, blocks):
    results = pipeline.run(job(make_cfg, tmp_path, f"schedule.ratio={ratio}"))
    assert len(results.pruning.removed_blocks) == blocks
    assert results.pruning.ratio_achieved == pytest.approx(blocks / 4)
    assert results.pruning.ratio_asked == pytest.approx(ratio)


def test_protected_blocks_stay(make_cfg, tmp_path):
    results = pipeline.run(job(make_cfg, tmp_path, "method.blocks=2", "schedule.protect_first=1",
                               "schedule.protect_last=1"))
    assert results.pruning.removed_blocks == [1, 2]


@pytest.mark.parametrize("blocks,message", [(4, "at least one must remain"),
                                            (9, "at least one must remain")])
def test_removing_every_block_or_more_is_refused(make_cfg, tmp_path, blocks, message):
    with pytest.raises(PrunelabError, match=message):
        pipeline.run(job(make_cfg, tmp_path, f"method.blocks={blocks}"))


def test_more_blocks_than_the_unprotected_ones_is_refused(make_cfg, tmp_path):
    with pytest.raises(PrunelabError, match="2 are protected. Ask for at most 2"):
        pipeline.run(job(make_cfg, tmp_path, "method.blocks=3", "schedule.protect_first=2"))


def test_zero_blocks_and_module_schedules_are_refused(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="blocks must be >= 1"):
        validate(job(make_cfg, tmp_path, "method.blocks=0"))
    with pytest.raises(PrunelabError, match="removes whole blocks"):
        pipeline.run(job(make_cfg, tmp_path, "schedule.attention_ratio=0.1"))


def test_a_sweep_over_blocks_is_one_table_row():
    table = build_table([record("shortgpt", 1 / 30, 60.0, blocks=1),
                         record("shortgpt", 2 / 30, 68.0, blocks=2),
                         record("flap", 1 / 30, 56.0, metric="WIFV")])
    assert [(row.label, row.ratio) for row in table.rows] == [
        ("shortgpt", 0.0333), ("flap", 0.0333), ("shortgpt", 0.0667), ("flap", 0.0667)]
