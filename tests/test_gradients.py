"""The ``gradients`` capability: the stage hands a method d(loss)/dW of every projection."""

from __future__ import annotations

import pytest
import torch

from prunelab import pruning
from prunelab.config.schema import validate
from prunelab.data.calibration import sample_calibration
from prunelab.data.corpora import load_corpus
from prunelab.methods import PruningMethod, UnitScores, check_declarations, register
from prunelab.models.loading import load_model


class Taylor(PruningMethod):
    """First-order Taylor scores |W * dL/dW| (LLM-Pruner's element-wise criterion)."""

    needs = frozenset({"gradients"})
    seen: list = []

    def score_block(self, index, layer, stats, comparable):
        grads = stats["gradients"]
        self.seen.append(grads)
        taylor = (layer.o_proj.weight.detach() * grads["o_proj"]).abs().sum(0).double()
        mlp = (layer.down_proj.weight.detach() * grads["down_proj"]).abs().sum(0).double()
        return UnitScores(taylor.view(layer.geometry.num_heads, -1).sum(1), mlp)


def test_gradients_equal_autograd_on_the_calibration_batch(make_cfg, tmp_path):
    check_declarations(Taylor)
    run = validate(make_cfg("model=tiny_llama", "calibration.nsamples=4",
                            "calibration.seqlen=16", "calibration.batch_size=4",
                            f"paths.cache_dir={tmp_path}"))
    loaded = load_model(run.model, run.paths.cache_dir)
    reference = load_model(run.model, run.paths.cache_dir).model
    calib = run.calibration
    samples = sample_calibration(load_corpus(calib.dataset, calib.split, run.paths.data_dir),
                                 loaded.tokenizer, calib.nsamples, calib.seqlen, calib.seed,
                                 mode=calib.mode, joiner=calib.joiner)
    reference(input_ids=samples, labels=samples).loss.backward()
    Taylor.seen = []
    source = list(loaded.model.parameters())
    outcome = pruning.prune(Taylor(None), loaded, run)
    assert len(Taylor.seen) == 3 and "gradients" in outcome.timings_s
    for block, grads in zip(reference.model.layers, Taylor.seen):
        assert set(grads) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                              "down_proj"}
        assert torch.allclose(grads["down_proj"], block.mlp.down_proj.weight.grad, atol=1e-7)
        assert torch.allclose(grads["q_proj"], block.self_attn.q_proj.weight.grad, atol=1e-7)
    # the pass leaves the source model as it found it: every flag restored, no gradient kept
    assert all(p.requires_grad and p.grad is None for p in source)


def test_sequential_gradients_are_refused_at_registration():
    cls = type("SequentialTaylor", (Taylor,), {"needs": frozenset({"gradients", "sequential"})})
    with pytest.raises(TypeError, match="sequential and gradients together"):
        register("sequential_taylor")(cls)
