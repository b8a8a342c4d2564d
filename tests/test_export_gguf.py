"""GGUF export for llama.cpp's deci graph: the identities by hand, then parity in llama.cpp.

The llama.cpp tests need llama-cpp-python (built from source; ``bash scripts/setup.sh
--llama-cpp``, which CI runs) and are skipped with that reason where it is missing.
"""

from __future__ import annotations

import builtins
import copy
import importlib.util
import math

import numpy as np
import pytest
import torch

import prunelab  # noqa: F401  (registers the pruned architecture)
from prunelab.errors import PrunelabError
from prunelab.export import deci_model, even_groups, export_gguf
from prunelab.export.deci import rope_pairs_order
from prunelab.export.llamacpp import LLAMA_CPP_SPEC, require_llama_cpp
from prunelab.models.adapters import adapter_for
from prunelab.models.macs import attention_macs
from prunelab.models.plan import LayerPlan, PruningPlan
from prunelab.models.surgery import prune_model
from tests.helpers.plans import keep_all
from tests.helpers.tiny import tiny_model

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(
    not HAS_LLAMA_CPP, reason=f"llama-cpp-python is not installed (pip install "
    f"'{LLAMA_CPP_SPEC}', or bash scripts/setup.sh --llama-cpp)")


def means_for(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(layer.o_proj.in_features, generator=g),
             torch.randn(layer.down_proj.in_features, generator=g))
            for layer in adapter_for(model).layers]


def pruned(layout: str, plans: list[tuple[list[int], list[int]]], hidden: int = 96):
    """A tiny model cut by the given (heads, channels) per block, with compensation biases."""
    model = tiny_model(layout, layers=len(plans), hidden=hidden, ffn=48, init_std=0.2)
    plan = PruningPlan([LayerPlan(h, c) for h, c in plans])
    return prune_model(model, adapter_for(model), plan, means_for(model, 1)).eval()


ALL = list(range(48))
#: gqa: 6 query heads in 2 KV groups of 3. Block 0 loses its attention, block 1 its MLP,
#: block 2 keeps uneven groups (3 + 1), the last block loses its MLP.
HOLES = [([], ALL[:30]), ([0, 1, 4], []), ([0, 1, 2, 3], ALL[5:40]), ([2, 5], [])]


def test_even_groups_keep_regular_layouts_and_pick_the_cheapest_evening():
    regular = even_groups([0, 0, 0, 1, 1, 1], hidden=64, head_dim=16, context=512)
    assert regular.query_heads == (0, 1, 2, 3, 4, 5) and regular.kv_heads == (0, 1)
    layout = even_groups([0, 0, 0, 1], hidden=64, head_dim=16, context=512)
    n_head, n_kv = len(layout.query_heads), len(layout.kv_heads)
    assert n_head % n_kv == 0
    assert sorted(h for h in layout.query_heads if h is not None) == [0, 1, 2, 3]
    g = layout.group_size
    for slot, head in enumerate(layout.query_heads):  # query slot s reads KV slot s // g
        if head is not None:
            assert layout.kv_heads[slot // g] == [0, 0, 0, 1][head]
    # the options: g=3 pads 2 heads (6 q, 2 kv); g=1 repeats KV (4 q, 4 kv); g=2: 6 q, 3 kv
    options = {(6, 2), (4, 4), (6, 3)}
    cheapest = min(options, key=lambda o: attention_macs(64, 16, o[0], o[1], 512))
    assert (n_head, n_kv) == cheapest


def test_rope_reordering_turns_half_split_rope_into_adjacent_pairs():
    d, pos, theta = 8, 5, 10000.0
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(d, generator=g), torch.randn(d, generator=g)
    freqs = theta ** (-torch.arange(0, d, 2).float() / d)
    cos, sin = torch.cos(pos * freqs), torch.sin(pos * freqs)

    def hf(x):  # rotate_half: coordinates i and i + d/2 rotate together
        a, b = x[: d // 2], x[d // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin])

    def adjacent(x):  # llama.cpp NORM: coordinates 2i and 2i + 1 rotate together
        a, b = x[0::2], x[1::2]
        return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=1).flatten()

    order = rope_pairs_order(d)
    assert torch.allclose(hf(q) @ hf(k), adjacent(q[order]) @ adjacent(k[order]), atol=1e-5)


def test_removed_sub_layers_become_exact_stand_ins():
    model = pruned("gqa", HOLES)
    adapter = adapter_for(model)
    deci = deci_model(adapter)
    shapes = [(layer.n_head, layer.n_head_kv, layer.n_ff) for layer in deci.layers]
    assert shapes[0] == (1, 1, 30) and deci.layers[0].zero_head
    assert shapes[1][2] == 1 and deci.layers[1].zero_mlp and deci.layers[3].zero_mlp
    assert shapes[2][0] % shapes[2][1] == 0
    t, layers = deci.tensors, adapter.layers
    assert torch.count_nonzero(t["blk.0.attn_output.weight"]) == 0
    assert torch.equal(t["blk.0.attn_output.bias"], layers[0].layer.attn_out_bias.detach())
    assert torch.equal(t["blk.1.ffn_down.bias"], layers[1].layer.mlp_out_bias.detach())
    assert torch.count_nonzero(t["blk.1.ffn_down.weight"]) == 0


def test_a_removed_attention_bias_moves_to_the_previous_block_output():
    model = pruned("mha", [([0, 1], ALL[:20]), ([], ALL[:10]), ([3], ALL)])
    layers = adapter_for(model).layers
    deci = deci_model(adapter_for(model))
    assert deci.layers[1].n_head == 0 and deci.layers[1].layout is None
    expected = layers[0].layer.mlp_out_bias + layers[1].layer.attn_out_bias
    assert torch.allclose(deci.tensors["blk.0.ffn_down.bias"], expected.detach())
    assert "blk.1.attn_output.bias" not in deci.tensors


def test_features_the_deci_graph_cannot_run_are_refused_by_name(tmp_path):
    model = tiny_model("gqa")
    model.config.hidden_act = "gelu"
    with pytest.raises(PrunelabError, match="activation is 'gelu'"):
        export_gguf(adapter_for(model), tmp_path / "x.gguf")
    mistral = tiny_model("mistral")
    with pytest.raises(PrunelabError, match="convert_hf_to_gguf"):
        export_gguf(adapter_for(mistral), tmp_path / "x.gguf")
    with pytest.raises(PrunelabError, match="Unknown GGUF tensor type"):
        export_gguf(adapter_for(tiny_model("gqa")), tmp_path / "x.gguf", "q2_k")
    gemma = tiny_model("gemma3")
    pruned_gemma = prune_model(gemma, adapter_for(gemma), keep_all(adapter_for(gemma)))
    with pytest.raises(PrunelabError, match="Gemma-3 blocks .* no counterpart"):
        export_gguf(adapter_for(pruned_gemma), tmp_path / "x.gguf")


def test_missing_llama_cpp_is_one_message_with_the_install_command(monkeypatch):
    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name == "llama_cpp":
            raise ImportError("No module named 'llama_cpp'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    with pytest.raises(PrunelabError, match=r"pip install 'llama-cpp-python==0\.3\.36'"):
        require_llama_cpp()


# -- parity in llama.cpp ---------------------------------------------------------------


def llama_cpp_logits(path, ids):
    from prunelab.export.llamacpp import logits, open_gguf
    return logits(open_gguf(path, n_ctx=len(ids)), ids)


def torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


PARITY_CASES = {
    "holes_gqa": ("gqa", HOLES),
    "mha_first_attention_kept": ("mha", [([0, 1], ALL[:20]), ([], ALL[:10]), ([3], [])]),
    "uneven_gqa": ("gqa", [([0, 3, 4, 5], ALL), ([1, 2, 5], ALL[:7]), ([0], ALL[:3])]),
    "qwen2_biases": ("qwen2", [([0, 1, 2], ALL[:25]), ([3], ALL), ([1, 3], ALL[:9])]),
}


@needs_llama_cpp
@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_f32_gguf_logits_equal_the_pruned_model_in_llama_cpp(case, tmp_path):
    layout, plans = PARITY_CASES[case]
    model = pruned(layout, plans)
    export_gguf(adapter_for(model), tmp_path / "m.gguf", "f32")
    ids = torch.randint(0, 257, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    ours, theirs = torch_logits(model, ids), llama_cpp_logits(tmp_path / "m.gguf", ids)
    assert np.abs(ours - theirs).max() <= 1e-2
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= 0.999


@needs_llama_cpp
def test_dense_llama_exports_too_and_quantised_types_run(tmp_path):
    model = tiny_model("gqa", hidden=96, ffn=64, init_std=0.2)
    ids = list(range(5, 45))
    ours = torch_logits(model, ids)
    scale = float(np.abs(ours).max())
    # f32 is exact to llama.cpp's arithmetic; f16 and q8_0 round (measured: 0.5% and 9% of
    # the largest logit on this model)
    bounds = {"f32": 1e-2, "f16": 0.01 * scale, "q8_0": 0.15 * scale}
    errors = {}
    for kind, bound in bounds.items():
        path = tmp_path / f"m-{kind}.gguf"
        export_gguf(adapter_for(model), path, kind)
        errors[kind] = float(np.abs(ours - llama_cpp_logits(path, ids)).max())
        assert errors[kind] <= bound, kind
    assert errors["f32"] < errors["f16"] < errors["q8_0"]
    sizes = {k: (tmp_path / f"m-{k}.gguf").stat().st_size for k in bounds}
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"]


@needs_llama_cpp
@pytest.mark.integration
def test_pruned_smollm2_in_llama_cpp_matches_prunelab(smollm2, tmp_path, data_dir):
    """A pruned SmolLM2 (uneven groups, removed sub-layers) exported with its own tokenizer:
    PTB and WikiText2 perplexity on the same windows within 0.1%, logits within 1e-2, and
    llama.cpp's tokenizer gives prunelab's token ids."""
    from prunelab.data.corpora import load_corpus
    from prunelab.eval.perplexity import evaluation_windows, perplexity
    from prunelab.export.llamacpp import logits as llama_cpp_logits_of
    from prunelab.export.llamacpp import open_gguf
    from prunelab.export.llamacpp import perplexity as llama_cpp_perplexity

    adapter = smollm2.adapter
    g = torch.Generator().manual_seed(0)
    plans = []
    for i in range(len(adapter.layers)):
        heads = sorted(torch.randperm(9, generator=g)[:5].tolist())
        channels = sorted(torch.randperm(1536, generator=g)[:700].tolist())
        plans.append(LayerPlan([] if i in (0, 7) else heads, [] if i in (3, 29) else channels))
    model = prune_model(copy.deepcopy(smollm2.model), adapter, PruningPlan(plans),
                        means_for(smollm2.model, 3)).eval()
    source = smollm2.source.removeprefix("gguf:")
    path = tmp_path / "smollm2.gguf"
    export_gguf(adapter_for(model), path, "f32", vocab_gguf=source)
    llm = open_gguf(path, n_ctx=128)
    for dataset, folder in (("ptb", None), ("wikitext2", data_dir)):
        corpus = load_corpus(dataset, "test", folder)
        windows = evaluation_windows(corpus, smollm2.tokenizer, 128, "\n\n", max_windows=3)
        ours = perplexity(model, windows, batch_size=3, device=torch.device("cpu"))["ppl"]
        theirs = llama_cpp_perplexity(llm, windows.numpy())
        assert math.isfinite(theirs) and abs(theirs / ours - 1) <= 1e-3, dataset
    ids = windows[0].tolist()
    ours_logits, theirs_logits = torch_logits(model, ids), llama_cpp_logits_of(llm, ids)
    assert np.abs(ours_logits - theirs_logits).max() <= 1e-2
    assert (ours_logits.argmax(-1) == theirs_logits.argmax(-1)).mean() >= 0.999
    text = "The quick brown fox jumps over the lazy dog."
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == \
        smollm2.tokenizer(text, add_special_tokens=False)["input_ids"]



def test_a_saved_job_folder_exports_and_names_its_tokenizer_source(make_cfg, tmp_path):
    import json

    import gguf

    from prunelab import pipeline
    from prunelab.export.folder import export_folder
    from prunelab.models.plan import PLAN_FILE, SOURCE_FIELD

    cfg = make_cfg("model=tiny_llama_gqa", "method=flap", "schedule.ratio=0.3",
                   "calibration.nsamples=8", "calibration.seqlen=32", "benchmark=smoke",
                   "logger=none", "save_model=true", f"paths.cache_dir={tmp_path / 'c'}",
                   output_dir=tmp_path / "job")
    results = pipeline.run(cfg).to_dict()
    folder = tmp_path / "job" / "model"
    plan = json.loads((folder / PLAN_FILE).read_text())
    assert plan[SOURCE_FIELD] == results["model"]["source"]
    with pytest.raises(PrunelabError, match="--vocab-from"):
        export_folder(folder, tmp_path / "m.gguf")  # a random model has no source GGUF
    report = export_folder(folder, tmp_path / "m.gguf", no_vocab=True)
    fields = gguf.GGUFReader(report.path).fields
    kept = [len(layer["heads"]) for layer in plan["layers"]]
    heads = fields["deci.attention.head_count"].contents()
    padding = [layer["padding_heads"] for layer in report.layers]
    assert [h - p for h, p in zip(heads, padding)] == kept
