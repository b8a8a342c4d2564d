"""Streamed weights and spilled activations give what the resident model gives."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from prunelab import pipeline
from prunelab.calibration.runner import run_layerwise
from prunelab.config.schema import ModelConfig, validate
from prunelab.errors import ConfigError, PrunelabError
from prunelab.eval.perplexity import layerwise_perplexity, perplexity
from prunelab.models import streaming
from prunelab.models.layerwise import Residency
from prunelab.models.loading import load_model, load_streamed
from prunelab.models.plan import PruningPlan
from prunelab.models.streamed_surgery import write_pruned_streamed
from prunelab.models.surgery import prune_model, save_pruned
from prunelab.models.tiny import byte_tokenizer
from prunelab.spill import SpilledTensor, activation_buffer
from tests.helpers.tiny import tiny_model

CPU = torch.device("cpu")


@pytest.fixture(params=["gqa", "gemma3"])
def tiny_folder(request, tmp_path):
    """A tiny model saved as a Hugging Face folder, and the config that loads it."""
    folder = tmp_path / f"tiny-{request.param}"
    tiny_model(request.param, layers=3).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return ModelConfig(name="tiny", source="local", path=str(folder), device="cpu")


def test_a_materialized_module_holds_the_saved_weights_and_only_inside(tiny_folder, tmp_path):
    resident = load_model(tiny_folder, str(tmp_path / "cache"))
    streamed = load_streamed(tiny_folder, str(tmp_path / "cache"))
    assert streamed.fingerprint == resident.fingerprint
    block = streamed.adapter.decoder_layers[1]
    with streamed.weights.materialized(block, streamed.model.get_output_embeddings()):
        for (name, ours), (_, theirs) in zip(
                block.named_parameters(), resident.adapter.decoder_layers[1].named_parameters()):
            assert torch.equal(ours, theirs), name
        assert torch.equal(streamed.model.get_output_embeddings().weight,
                           resident.model.get_output_embeddings().weight)
    assert all(p.device.type == "meta" for p in block.parameters())
    assert streamed.weights.resident_blocks == set()


def test_streamed_spilled_calibration_equals_resident(tiny_folder, tmp_path):
    cache = str(tmp_path / "cache")
    resident, streamed = load_model(tiny_folder, cache), load_streamed(tiny_folder, cache)
    samples = torch.randint(0, 257, (7, 12), generator=torch.Generator().manual_seed(0))
    kinds = ["attn_input", "mlp_input"]
    expected = run_layerwise(resident.adapter, samples, kinds, 3, CPU)
    spill = tmp_path / "spill"
    got = run_layerwise(streamed.adapter, samples, kinds, 3, CPU, residency=Residency(
        streamed.weights, buffer_budget_bytes=64, spill_dir=str(spill)))
    assert streamed.weights.peak_blocks == 1  # never two blocks' weights at once
    assert streamed.weights.materializations == 1 + len(expected)  # embeddings, each block
    for ours, theirs in zip(got, expected):
        for kind in kinds:
            for field, tensor in theirs[kind].items():
                assert torch.equal(ours[kind][field], tensor), (kind, field)
    assert not list(spill.iterdir())  # spilled buffers are deleted with the pass


def test_a_spilled_tensor_reads_back_what_was_written(tmp_path):
    data = torch.randn(5, 3, 4)
    buffer = activation_buffer(tuple(data.shape), torch.float32, CPU, 100, tmp_path)
    assert isinstance(buffer, SpilledTensor)
    buffer[0:2], buffer[2:5] = data[0:2], data[2:5]
    assert torch.equal(buffer[1:4], data[1:4]) and torch.equal(buffer[0:5], data)
    with pytest.raises(ValueError, match="rows 0:2"):
        buffer[0:2] = data[0:3]
    path = buffer.path
    buffer.close()
    assert not path or not (tmp_path / path).exists()
    assert isinstance(activation_buffer((5, 3, 4), torch.float32, CPU, 240, tmp_path),
                      torch.Tensor)


def test_streaming_a_random_model_is_refused(tmp_path):
    cfg = ModelConfig(name="tiny", source="random", architecture={"model_type": "llama"})
    with pytest.raises(PrunelabError, match="random model"):
        load_streamed(cfg, str(tmp_path))


def test_streaming_an_unconverted_gguf_says_to_convert_first(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF not really")
    cfg = ModelConfig(name="g", source="gguf", path=str(gguf))
    with pytest.raises(PrunelabError, match="(?s)not converted yet.*python run.py model=g"):
        load_streamed(cfg, str(tmp_path / "cache"))


def _plan_and_means(adapter):
    """Heads and channels removed in every block, all of block 2; FLAP-like means."""
    g = torch.Generator().manual_seed(1)
    removed, means = [], []
    for index, layer in enumerate(adapter.layers):
        geometry = layer.geometry
        heads = set(range(geometry.num_heads)) if index == 2 else {0}
        channels = set(range(geometry.intermediate_size)) if index == 2 else {1, 3, 5}
        removed.append({"attention": heads, "mlp": channels})
        means.append((torch.randn(geometry.num_heads * layer.head_dim, generator=g),
                      torch.randn(geometry.intermediate_size, generator=g)))
    return PruningPlan.from_removed(adapter, removed), means


def test_streamed_surgery_writes_what_resident_surgery_saves(tiny_folder, tmp_path):
    cache = str(tmp_path / "cache")
    resident, streamed = load_model(tiny_folder, cache), load_streamed(tiny_folder, cache)
    plan, means = _plan_and_means(resident.adapter)
    pruned = prune_model(resident.model, resident.adapter, plan, means)
    save_pruned(pruned, resident.tokenizer, tmp_path / "resident", plan)
    write_pruned_streamed(streamed.weights, streamed.adapter, streamed.tokenizer, plan, means,
                          tmp_path / "streamed")
    assert streamed.weights.peak_blocks == 1
    ours, theirs = _tensors(tmp_path / "streamed"), _tensors(tmp_path / "resident")
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name
    assert len(list((tmp_path / "streamed").glob("model-*.safetensors"))) == 4
    config = [json.loads((tmp_path / f / "config.json").read_text())
              for f in ("streamed", "resident")]
    assert config[0] == config[1]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed").eval()
    ids = torch.randint(0, 257, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, pruned(ids).logits)


def _tensors(folder):
    out = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            out.update({key: f.get_tensor(key) for key in f.keys()})
    return out


def test_layerwise_perplexity_of_a_streamed_pruned_model_equals_resident(tiny_folder, tmp_path):
    cache = str(tmp_path / "cache")
    streamed = load_streamed(tiny_folder, cache)
    plan, means = _plan_and_means(streamed.adapter)
    folder = write_pruned_streamed(streamed.weights, streamed.adapter, streamed.tokenizer, plan,
                                   means, tmp_path / "pruned")
    pruned_cfg = ModelConfig(name="pruned", source="local", path=str(folder), device="cpu")
    resident, layerwise = load_model(pruned_cfg, cache), load_streamed(pruned_cfg, cache)
    windows = torch.randint(0, 257, (9, 16), generator=torch.Generator().manual_seed(3))
    expected = perplexity(resident.model, windows, 4, CPU)
    residency = Residency(layerwise.weights, buffer_budget_bytes=256, spill_dir=str(tmp_path))
    got = layerwise_perplexity(layerwise.adapter, residency, windows, 4, CPU)
    assert got["ppl"] == pytest.approx(expected["ppl"], rel=1e-6)
    assert got["predicted_tokens"] == expected["predicted_tokens"] == 9 * 15
    assert layerwise.weights.peak_blocks == 1


def _local_model(tmp_path, layers: int = 3) -> list[str]:
    """Overrides that load a tiny LLaMA-GQA saved as a Hugging Face folder under ``tmp_path``."""
    folder = tmp_path / "tiny"
    tiny_model("gqa", layers=layers).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return ["model=local", f"model.path={folder}", "model.device=cpu", "logger=none"]


def test_layerwise_loglikelihoods_equal_lm_evals_resident_ones(tiny_folder, tmp_path):
    """Requests of many lengths, one past the context (truncated), one the model's greedy."""
    from lm_eval.models.huggingface import HFLM

    from prunelab.eval.zeroshot_layerwise import LayerwiseLM

    cache = str(tmp_path / "cache")
    resident, streamed = load_model(tiny_folder, cache), load_streamed(tiny_folder, cache)
    g = torch.Generator().manual_seed(5)
    pieces = [(int(torch.randint(1, 40, (1,), generator=g)), int(torch.randint(1, 4, (1,),
                                                                                generator=g)))
              for _ in range(9)] + [(300, 2)]
    requests = [(("", ""), torch.randint(0, 257, (c,), generator=g).tolist(),
                 torch.randint(0, 257, (a,), generator=g).tolist()) for c, a in pieces]
    context = requests[0][1]
    with torch.no_grad():
        greedy = int(resident.model(torch.tensor([context])).logits[0, -1].argmax())
    requests.append((("", ""), context, [greedy]))
    options = {"tokenizer": byte_tokenizer(), "batch_size": 3}
    expected = HFLM(pretrained=resident.model, device="cpu", **options
                    )._loglikelihood_tokens(requests)
    residency = Residency(streamed.weights, buffer_budget_bytes=4096, spill_dir=str(tmp_path))
    layerwise = LayerwiseLM(streamed.adapter, residency, CPU, **options)
    got = layerwise._loglikelihood_tokens(requests)
    assert [flag for _, flag in got] == [flag for _, flag in expected]
    assert got[-1][1]
    assert [value for value, _ in got] == pytest.approx([v for v, _ in expected], rel=1e-5)
    assert streamed.weights.peak_blocks == 1
    assert not list(tmp_path.glob("activations-*"))
    with pytest.raises(PrunelabError, match="multiple-choice"):
        layerwise.generate_until([])


def test_a_layerwise_zero_shot_job_equals_the_resident_one(make_cfg, tmp_path):
    common = [*_local_model(tmp_path), "method=flap", "benchmark=zeroshot_smoke",
              "calibration.nsamples=8"]
    resident = pipeline.run(make_cfg(*common, output_dir=tmp_path / "resident"))
    streamed = pipeline.run(make_cfg(*common, "memory=streamed", "memory.evaluation=layerwise",
                                     output_dir=tmp_path / "streamed"))
    assert streamed.metrics.zero_shot.tasks == resident.metrics.zero_shot.tasks


@pytest.mark.parametrize("method", ["flap", "wanda_sp", "bip", "interaction", "shortgpt"])
def test_a_streamed_job_of_each_method_gives_the_resident_plan(method, make_cfg, tmp_path):
    """Calibration, sequential calibration, block scores, module-removal effects, whole blocks;
    spilled buffers, the pruned model written block by block and evaluated layer-wise."""
    common = [*_local_model(tmp_path, layers=4), f"method={method}", "benchmark=smoke",
              "calibration.nsamples=8", "schedule.ratio=0.3"]
    resident = pipeline.run(make_cfg(*common, output_dir=tmp_path / "resident"))
    streamed = pipeline.run(make_cfg(
        *common, "memory=streamed", "memory.evaluation=layerwise",
        "memory.buffer_budget_gb=0.000001", f"paths.cache_dir={tmp_path / 'cache2'}",
        output_dir=tmp_path / "streamed"))
    assert resident.parameters.after.total < resident.parameters.before.total
    assert streamed.pruning.plan == resident.pruning.plan
    assert streamed.parameters == resident.parameters
    for name, result in resident.metrics.perplexity.items():
        assert streamed.metrics.perplexity[name].ppl == pytest.approx(result.ppl, rel=1e-6)
    assert (tmp_path / "streamed" / "model" / "model.safetensors.index.json").is_file()
    assert not list((tmp_path / "streamed").glob("activations-*"))


def test_streaming_refuses_what_needs_the_whole_model(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="speed"):
        validate(make_cfg("memory=streamed", "memory.evaluation=layerwise"))
    with pytest.raises(ConfigError, match="engine=auto or layerwise"):
        validate(make_cfg("memory=streamed", "calibration.engine=streaming"))
    with pytest.raises(ConfigError, match="needs memory.stream=true|set memory.stream=true"):
        validate(make_cfg("memory.evaluation=layerwise"))
    with pytest.raises(PrunelabError, match="loss gradients"):
        pipeline.run(make_cfg(*_local_model(tmp_path), "method=llm_pruner",
                              "schedule.protect_first=1", "schedule.protect_last=1",
                              "memory=streamed", "benchmark=smoke"))


def test_large_tensors_are_read_in_chunks_of_rows(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(streaming, "READ_CHUNK_BYTES", 100)  # a few rows per read
    cache = str(tmp_path / "cache")
    resident, streamed = load_model(tiny_folder, cache), load_streamed(tiny_folder, cache)
    embed = streamed.model.get_input_embeddings()
    with streamed.weights.materialized(embed, streamed.adapter.decoder_layers[0]):
        assert torch.equal(embed.weight, resident.model.get_input_embeddings().weight)
        for (name, ours), (_, theirs) in zip(
                streamed.adapter.decoder_layers[0].named_parameters(),
                resident.adapter.decoder_layers[0].named_parameters()):
            assert torch.equal(ours, theirs), name


def test_a_streamed_job_on_an_unconverted_gguf_is_refused_before_converting(make_cfg, tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF not really")
    cfg = make_cfg("model=gguf", f"model.path={gguf}", "memory=streamed", "benchmark=smoke",
                   "logger=none", f"paths.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(PrunelabError, match="not converted yet"):
        pipeline.run(cfg)
    assert not (tmp_path / "cache" / "models").exists()
