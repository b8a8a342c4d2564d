"""Perplexity equals a direct computation: tiny model by hand, SmolLM2 against labels=."""

from __future__ import annotations

import math

import pytest
import torch

from prunelab import pipeline
from prunelab.data.calibration import with_bos
from prunelab.data.corpora import Corpus, load_corpus
from prunelab.errors import PrunelabError
from prunelab.eval.perplexity import evaluation_windows, perplexity
from prunelab.models.tiny import byte_tokenizer, random_model


def direct_ppl(model, windows: torch.Tensor) -> float:
    """The plain loop of the papers' scripts: model(labels=...) per window, mean of losses."""
    with torch.no_grad():
        losses = [model(input_ids=w[None], labels=w[None]).loss.double() for w in windows]
    return math.exp(torch.stack(losses).mean().item())


def test_windows_are_non_overlapping_and_drop_remainder():
    tok = byte_tokenizer()
    corpus = Corpus("x", "test", ["abcdefghij", "klmnop"], "mem")
    windows = evaluation_windows(corpus, tok, seqlen=5, joiner="\n\n", max_windows=None)
    text = "abcdefghij\n\nklmnop"  # 18 bytes -> 3 windows of 5, 3 bytes dropped
    assert windows.shape == (3, 5)
    assert tok.decode(windows.flatten()) == text[:15]
    assert evaluation_windows(corpus, tok, 5, "\n\n", max_windows=2).shape == (2, 5)


def test_tiny_model_ppl_equals_hand_computation():
    model = random_model({"model_type": "llama", "hidden_size": 32, "intermediate_size": 48,
                          "num_hidden_layers": 2, "num_attention_heads": 4,
                          "num_key_value_heads": 2}, seed=1).eval()
    windows = torch.randint(0, 257, (5, 16), generator=torch.Generator().manual_seed(0))
    result = perplexity(model, windows, batch_size=2, device=torch.device("cpu"))
    with torch.no_grad():
        logp = torch.log_softmax(model(windows).logits.double(), dim=-1)
    nll = -logp[:, :-1].gather(-1, windows[:, 1:, None]).mean()
    assert result["predicted_tokens"] == 5 * 15
    assert result["ppl"] == pytest.approx(math.exp(nll.item()), rel=1e-6)
    assert result["ppl"] == pytest.approx(direct_ppl(model, windows), rel=1e-6)


@pytest.mark.integration
def test_smollm2_ptb_ppl_equals_direct_loop(smollm2):
    corpus = load_corpus("ptb", "test", None)
    windows = evaluation_windows(corpus, smollm2.tokenizer, seqlen=512, joiner="\n\n",
                                 max_windows=4)
    ours = perplexity(smollm2.model, windows, batch_size=2, device=smollm2.device)["ppl"]
    assert ours == pytest.approx(direct_ppl(smollm2.model, windows), rel=1e-3)
    assert 30 < ours < 120  # DESIGN.md: about 59 over the first 40 windows


def test_with_bos_every_window_token_is_predicted_after_a_bos():
    tok = byte_tokenizer()
    tok.add_special_tokens({"bos_token": "<bos>"})
    model = random_model({"model_type": "llama", "hidden_size": 32, "intermediate_size": 48,
                          "num_hidden_layers": 2, "num_attention_heads": 4,
                          "num_key_value_heads": 2, "vocab_size": len(tok)}, seed=1).eval()
    windows = torch.randint(0, 257, (3, 8), generator=torch.Generator().manual_seed(0))
    prefixed = with_bos(windows, tok)
    assert prefixed.shape == (3, 9) and (prefixed[:, 0] == tok.bos_token_id).all()
    assert torch.equal(prefixed[:, 1:], windows)
    result = perplexity(model, prefixed, batch_size=2, device=torch.device("cpu"))
    with torch.no_grad():
        logp = torch.log_softmax(model(prefixed).logits.double(), dim=-1)
    nll = -logp[:, :-1].gather(-1, windows[:, :, None]).mean()  # every window token
    assert result["predicted_tokens"] == 3 * 8
    assert result["ppl"] == pytest.approx(math.exp(nll.item()), rel=1e-6)


def test_bos_for_a_tokenizer_without_one_is_refused(make_cfg, tmp_path):
    cfg = make_cfg("model=tiny_llama", "+model.bos=true", "benchmark=smoke", "method=dense",
                   "logger=none", f"paths.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(PrunelabError, match="tokenizer has no BOS token"):
        pipeline.run(cfg)
