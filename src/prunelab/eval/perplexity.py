"""Token perplexity with the papers' protocol (PROTOCOLS.md).

The text is ``joiner.join(rows)`` tokenised once without special tokens, cut into
non-overlapping windows of ``seqlen`` tokens (remainder dropped, no BOS per window unless
``model.bos``: then each window follows a BOS token and all its tokens are predicted), and
PPL = ``exp(mean NLL over every predicted token)`` accumulated in float64. The LM head runs
over a bounded chunk of tokens at a time (models/lm_head.py), so a batch's logits are never held.
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from prunelab.config.schema import PerplexitySpec
from prunelab.data.calibration import tokenize
from prunelab.data.corpora import Corpus
from prunelab.errors import PrunelabError
from prunelab.models.adapters import ModelAdapter
from prunelab.models.layerwise import Residency, capture_block_inputs, forward_block, to_device
from prunelab.models.lm_head import next_token_nll


def evaluation_windows(corpus: Corpus, tokenizer, seqlen: int, joiner: str,
                       max_windows: int | None) -> torch.Tensor:
    """The ``[n, seqlen]`` windows perplexity is computed on."""
    ids = tokenize(tokenizer, joiner.join(corpus.rows))
    count = ids.numel() // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise PrunelabError(
            f"{corpus.dataset}/{corpus.split} has {ids.numel()} tokens, fewer than one window of "
            f"{seqlen}. Lower seqlen or use a larger split."
        )
    return ids[: count * seqlen].view(count, seqlen)


@torch.no_grad()
def perplexity(model: torch.nn.Module, windows: torch.Tensor, batch_size: int,
               device: torch.device, desc: str = "ppl") -> dict:
    """Perplexity of ``model`` over ``windows``, with the counts needed to audit it."""
    total_nll = 0.0
    predicted = 0
    start = time.perf_counter()
    decoder, head = model.base_model, model.get_output_embeddings()
    for batch in tqdm(windows.split(batch_size), desc=desc, unit="batch"):
        batch = batch.to(device)
        hidden = decoder(input_ids=batch, use_cache=False).last_hidden_state
        total_nll += _batch_nll(hidden, batch, head, desc)
        predicted += batch[:, 1:].numel()
    return _result(total_nll, predicted, windows, start)


@torch.no_grad()
def layerwise_perplexity(adapter: ModelAdapter, residency: Residency, windows: torch.Tensor,
                         batch_size: int, device: torch.device, desc: str = "ppl") -> dict:
    """:func:`perplexity` computed block by block: every window through block 0, then 1, ...

    For a streamed model: one block's weights in memory at a time, the windows' hidden states
    in two buffers that spill to disk past the residency's budget. The same blocks run on the
    same inputs as in :func:`perplexity`, so the figures agree to rounding.
    """
    start = time.perf_counter()
    storage = torch.device("cpu") if residency.weights is not None else device
    embed = adapter.embed_tokens
    with residency.resident(embed, device=device):
        shape = (windows.shape[0], windows.shape[1], adapter.config.hidden_size)
        inputs, outputs = residency.buffers(shape, next(embed.parameters()).dtype, storage)
        inputs, block_kwargs = capture_block_inputs(adapter, windows, batch_size, device,
                                                    inputs)
    block_kwargs = to_device(block_kwargs, device)
    for index, block in enumerate(tqdm(adapter.decoder_layers, desc=f"{desc} (layer-wise)",
                                       unit="block")):
        with residency.resident(block, device=device):
            forward_block(block, inputs, block_kwargs[index], batch_size, device, outputs)
        inputs, outputs = outputs, inputs
    total_nll, predicted = 0.0, 0
    with residency.resident(adapter.final_norm, adapter.lm_head, device=device):
        for first in range(0, windows.shape[0], batch_size):
            batch = windows[first:first + batch_size].to(device)
            hidden = adapter.final_norm(inputs[first:first + batch.shape[0]].to(device))
            total_nll += _batch_nll(hidden, batch, adapter.lm_head, desc)
            predicted += batch[:, 1:].numel()
    return _result(total_nll, predicted, windows, start)


def _batch_nll(hidden: torch.Tensor, batch: torch.Tensor, head: torch.nn.Module,
               desc: str) -> float:
    """Summed next-token NLL of a batch from its final (normed) hidden states."""
    nll = next_token_nll(hidden[:, :-1].reshape(-1, hidden.size(-1)),
                         batch[:, 1:].reshape(-1), head)
    if not math.isfinite(nll):
        raise PrunelabError(
            f"{desc}: non-finite loss (NaN/Inf). The model's outputs overflowed; "
            "evaluate in float32 (model.dtype=float32)."
        )
    return nll


def _result(total_nll: float, predicted: int, windows: torch.Tensor, start: float) -> dict:
    mean_nll = total_nll / predicted
    return {
        "ppl": math.exp(mean_nll),
        "mean_nll": mean_nll,
        "windows": windows.size(0),
        "predicted_tokens": predicted,
        "wall_time_s": time.perf_counter() - start,
    }


def protocol_fields(spec: PerplexitySpec, corpus: Corpus, bos: bool) -> dict:
    """Protocol details recorded next to a perplexity value."""
    return {
        **corpus.provenance(),
        "seqlen": spec.seqlen,
        "bos": bos,
        "joiner": spec.joiner,
        "max_windows": spec.max_windows,
        "documents": spec.documents,
        "metric": "token_perplexity",
    }
