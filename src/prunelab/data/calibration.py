"""Seeded calibration samples: ``nsamples`` windows of ``seqlen`` tokens.

Two modes (METHODS.md, "Calibration"):

- ``joined``: random windows of the whole corpus joined into one text (FLAP, Let-LLM-Tell);
- ``per_document``: one random window inside a random document that is longer than
  ``seqlen`` tokens (Wanda), drawing documents until ``nsamples`` windows are found.
"""

from __future__ import annotations

import random

import torch

from prunelab.data.corpora import Corpus
from prunelab.errors import PrunelabError, unknown_name_message

SAMPLING_MODES = ("joined", "per_document")


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text`` as a 1-D tensor, without special tokens (no BOS per window)."""
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def with_bos(windows: torch.Tensor, tokenizer) -> torch.Tensor:
    """``windows`` with the tokenizer's BOS token before each (``model.bos=true``).

    Every token of a window is then predicted (from the BOS before it), and a window is one
    token longer than its text.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise PrunelabError("model.bos=true, but the tokenizer has no BOS token. Set "
                            "model.bos=false for this model.")
    column = torch.full((windows.shape[0], 1), bos, dtype=windows.dtype)
    return torch.cat([column, windows], dim=1)


def sample_calibration(
    corpus: Corpus,
    tokenizer,
    nsamples: int,
    seqlen: int,
    seed: int,
    mode: str = "joined",
    joiner: str = "\n\n",
) -> torch.Tensor:
    """Return a ``[nsamples, seqlen]`` LongTensor of calibration windows, deterministic in seed."""
    if mode not in SAMPLING_MODES:
        raise PrunelabError(unknown_name_message("calibration mode", mode, SAMPLING_MODES))
    if nsamples < 1 or seqlen < 1:
        raise PrunelabError(f"calibration needs nsamples >= 1 and seqlen >= 1, "
                            f"got {nsamples} and {seqlen}.")
    rng = random.Random(seed)
    if mode == "joined":
        return _joined_windows(corpus, tokenizer, nsamples, seqlen, rng, joiner)
    return _per_document_windows(corpus, tokenizer, nsamples, seqlen, rng)


def _joined_windows(corpus, tokenizer, nsamples, seqlen, rng, joiner) -> torch.Tensor:
    ids = tokenize(tokenizer, joiner.join(corpus.rows))
    if ids.numel() <= seqlen:
        raise PrunelabError(
            f"{corpus.dataset}/{corpus.split} has {ids.numel()} tokens, too few for one "
            f"calibration window of {seqlen}. Lower calibration.seqlen or use a larger corpus."
        )
    starts = [rng.randint(0, ids.numel() - seqlen - 1) for _ in range(nsamples)]
    return torch.stack([ids[s : s + seqlen] for s in starts])


def _per_document_windows(corpus, tokenizer, nsamples, seqlen, rng) -> torch.Tensor:
    token_cache: dict[int, torch.Tensor] = {}
    windows = []
    max_draws = 100 * nsamples + len(corpus.rows)
    for _ in range(max_draws):
        index = rng.randint(0, len(corpus.rows) - 1)
        if index not in token_cache:
            token_cache[index] = tokenize(tokenizer, corpus.rows[index])
        ids = token_cache[index]
        if ids.numel() <= seqlen:
            continue
        start = rng.randint(0, ids.numel() - seqlen - 1)
        windows.append(ids[start : start + seqlen])
        if len(windows) == nsamples:
            return torch.stack(windows)
    raise PrunelabError(
        f"Found only {len(windows)} of {nsamples} documents longer than {seqlen} tokens in "
        f"{corpus.source} after {max_draws} draws. Lower calibration.seqlen, use "
        "mode=joined, or give more documents."
    )
