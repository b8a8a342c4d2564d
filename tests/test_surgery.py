"""Physically pruned models equal masked ones, save and reload exactly, and generate."""

from __future__ import annotations

import copy
import mmap
import os
import subprocess
import sys

import pytest
import torch

import prunelab  # noqa: F401  (registers the pruned architecture)
from prunelab.models.adapters import adapter_for
from prunelab.models.plan import LayerPlan, PruningPlan
from prunelab.models.surgery import prune_model, save_pruned
from tests.helpers.plans import keep_all, mask_model
from tests.helpers.tiny import LAYOUTS, tiny_model


def random_plan(model, seed: int) -> PruningPlan:
    """Uneven heads per KV head, a block with no heads, a block with no channels."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i, layer in enumerate(adapter_for(model).layers):
        heads, ffn = layer.geometry.num_heads, layer.geometry.intermediate_size
        keep_h = sorted(torch.randperm(heads, generator=g)[: max(1, heads // 2)].tolist())
        keep_c = sorted(torch.randperm(ffn, generator=g)[: ffn // 3].tolist())
        layers.append(LayerPlan([] if i == 1 else keep_h, [] if i == 2 else keep_c))
    return PruningPlan(layers)


def compensation(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(layer.o_proj.in_features, generator=g),
             torch.randn(layer.down_proj.in_features, generator=g))
            for layer in adapter_for(model).layers]


@pytest.fixture(params=sorted(LAYOUTS))
def case(request):
    model = tiny_model(request.param)
    plan, means = random_plan(model, 1), compensation(model, 2)
    pruned = prune_model(model, adapter_for(model), plan, means)
    masked = copy.deepcopy(model)
    mask_model(adapter_for(masked), plan, means)
    tokens = torch.randint(0, 257, (2, 13), generator=torch.Generator().manual_seed(3))
    return model, plan, pruned, masked, tokens


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def test_pruned_equals_masked(case):
    _, _, pruned, masked, tokens = case
    assert (logits(pruned, tokens) - logits(masked, tokens)).abs().max() < 1e-4


def test_pruned_geometry_follows_plan(case):
    model, plan, pruned, _, _ = case
    source = adapter_for(model).layers
    layers = adapter_for(pruned).layers
    for keep, src, layer in zip(plan.layers, source, layers):
        kv_of = src.kv_head_of()
        assert layer.geometry.num_heads == len(keep.heads)
        assert layer.geometry.num_kv_heads == len({kv_of[h] for h in keep.heads})
        assert layer.geometry.intermediate_size == len(keep.channels)
    # a removed sub-layer keeps none of its norms
    assert not layers[1].has_attention
    assert all(module_at(layers[1].layer, n) is None for n in source[1].attention_norms())
    assert not layers[2].has_mlp
    assert all(module_at(layers[2].layer, n) is None for n in source[2].mlp_norms())


def module_at(block, path: str):
    """The module at a dotted path, or None where the path ends early."""
    for part in path.split("."):
        block = getattr(block, part, None)
        if block is None:
            return None
    return block


def test_dense_plan_without_compensation_is_identity():
    model = tiny_model("gqa")
    adapter = adapter_for(model)
    pruned = prune_model(model, adapter, keep_all(adapter))
    tokens = torch.randint(0, 257, (1, 9))
    assert torch.equal(logits(pruned, tokens), logits(model, tokens))


def test_save_reload_identical(case, tmp_path):
    _, plan, pruned, _, tokens = case
    folder = save_pruned(pruned, None, tmp_path / "m", plan)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(reloaded) is type(pruned)
    assert type(pruned).__name__ in ("PrunelabForCausalLM", "PrunelabGemma3ForCausalLM")
    assert torch.equal(logits(reloaded, tokens), logits(pruned, tokens))
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))


@pytest.mark.parametrize("layout", ["gqa", "gemma3_gqa"])
def test_fresh_process_plain_transformers(tmp_path, layout):
    model = tiny_model(layout)
    plan, means = random_plan(model, 5), compensation(model, 6)
    pruned = prune_model(model, adapter_for(model), plan, means)
    save_pruned(pruned, None, tmp_path / "m", plan)
    tokens = torch.randint(0, 257, (1, 10), generator=torch.Generator().manual_seed(0))
    expected = logits(pruned, tokens)
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "assert 'prunelab' not in sys.modules\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'm')!r}, "
        "trust_remote_code=True).eval()\n"
        f"x = torch.tensor({tokens.tolist()})\n"
        "with torch.no_grad(): out = m(x).logits\n"
        "print(repr(out.flatten().tolist()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "PATH": ""}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = torch.tensor(eval(proc.stdout.strip().splitlines()[-1]))
    assert torch.equal(got, expected.flatten())


def test_generation_with_cache_matches_full_recompute(case):
    _, _, pruned, _, tokens = case
    out = pruned.generate(tokens[:1], max_new_tokens=6, do_sample=False,
                          attention_mask=torch.ones_like(tokens[:1]))
    seq = tokens[:1]
    for _ in range(6):
        seq = torch.cat([seq, logits(pruned, seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_removed_sublayers_run_nothing():
    model = tiny_model("gqa")
    plan = PruningPlan([LayerPlan([], []), LayerPlan([0], [0]), LayerPlan([], [1, 2])])
    pruned = prune_model(model, adapter_for(model), plan, compensation(model, 0))
    blocks = list(pruned.model.layers)
    calls = {i: 0 for i in range(3)}
    for i, block in enumerate(blocks):
        for module in block.modules():
            if module is not block:
                module.register_forward_hook(
                    lambda m, inp, out, i=i: calls.__setitem__(i, calls[i] + 1))
    logits(pruned, torch.randint(0, 257, (1, 5)))
    # block 0: bias only; block 1: norm + q,k,v,o + attention + norm + gate,up,down,act;
    # block 2: MLP only (its module, norm, gate, up, down, act)
    assert calls[0] == 0
    assert calls[2] == 6
    assert blocks[0].self_attn is None and blocks[0].mlp is None and blocks[2].self_attn is None


def test_releasing_the_source_gives_the_same_model():
    model = tiny_model("gqa")
    plan, means = random_plan(model, 1), compensation(model, 2)
    kept = prune_model(model, adapter_for(model), plan, means)
    source = copy.deepcopy(model)
    released = prune_model(source, adapter_for(source), plan, means, release_source=True)
    tokens = torch.randint(0, 257, (2, 9), generator=torch.Generator().manual_seed(4))
    assert torch.equal(logits(kept, tokens), logits(released, tokens))
    assert all(p.is_meta for p in source.model.layers.parameters())
    assert released.model.embed_tokens.weight is source.model.embed_tokens.weight


def _file_resident_bytes(path) -> int:
    """Resident bytes of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, current = 0, None
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:
            current = fields[5] if len(fields) > 5 else None
        elif fields[0] == "Rss:" and current == str(path):
            total += int(fields[1]) * 1024
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's smaps")
def test_released_source_blocks_leave_no_mapped_pages(tmp_path):
    """A dense model read memory-mapped from its file stops being resident block by block."""
    from transformers import AutoModelForCausalLM

    tiny_model("gqa", layers=2, hidden=96, ffn=2048).save_pretrained(tmp_path)
    path = (tmp_path / "model.safetensors").resolve()
    source = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    in_memory = copy.deepcopy(source)
    tokens = torch.randint(0, 257, (2, 9), generator=torch.Generator().manual_seed(4))
    logits(source, tokens)  # every page read
    if _file_resident_bytes(path) < path.stat().st_size // 2:
        pytest.skip("this transformers does not memory-map the weights it loads")
    # embeddings, head and final norm are shared with the pruned model, so they stay
    shared = sum(p.numel() * p.element_size() for name, p in source.named_parameters()
                 if ".layers." not in name)
    edges = (len(source.state_dict()) + 1) * mmap.PAGESIZE  # pages two tensors share stay
    plan, means = random_plan(source, 1), compensation(source, 2)
    expected = prune_model(in_memory, adapter_for(in_memory), plan, means)
    pruned = prune_model(source, adapter_for(source), plan, means, release_source=True)
    assert _file_resident_bytes(path) <= shared + edges < path.stat().st_size // 4
    assert torch.equal(logits(expected, tokens), logits(pruned, tokens))
