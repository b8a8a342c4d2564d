"""Zero-shot scoring of a streamed model, block by block (``memory.evaluation=layerwise``).

lm-eval scores a document by the log-likelihood of each answer given its context. Its HFLM
runs the whole model batch by batch; :class:`LayerwiseLM` keeps HFLM's requests (prompts,
tokenisation, left truncation to the context length, right-padded batches of sorted
lengths) and runs every request through block 0, then block 1, ..., with one block's weights
in memory and all requests' hidden states in two buffers that spill to disk past the job's
budget (models/layerwise.py). Only the answer positions reach the LM head, so no batch's
logits are ever held. The figures equal the resident evaluation's to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM

from prunelab.errors import PrunelabError
from prunelab.models.adapters import ModelAdapter
from prunelab.models.layerwise import Residency, ragged_hidden_states

#: One lm-eval request as HFLM passes it on: (strings, context tokens, continuation tokens).
Request = tuple[tuple[str, str], list[int], list[int]]


class LayerwiseLM(HFLM):
    """HFLM whose log-likelihoods are computed layer-wise; generation is not supported."""

    def __init__(self, adapter: ModelAdapter, residency: Residency, device: torch.device,
                 **hflm_options):
        super().__init__(pretrained=adapter.model, device=str(device), **hflm_options)
        # HFLM takes a passed model's own device, which is meta for a streamed one
        self._adapter, self._residency, self._run_on = adapter, residency, device

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        """(sum of the answer's log-probabilities, whether greedy decoding gives it) each."""
        if not requests:
            return []
        inputs, answers = [], []
        for _, context, continuation in requests:
            if not context or not continuation or len(continuation) > self.max_length:
                raise PrunelabError("lm-eval gave a request with an empty context or answer, "
                                    "or an answer longer than the context length")
            tokens = (context + continuation)[-(self.max_length + 1):]
            inputs.append(torch.tensor(tokens[:-1], dtype=torch.long))
            answers.append(torch.tensor(continuation, dtype=torch.long))
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
        size = int(override_bs or self.batch_size)
        batches = [order[first:first + size] for first in range(0, len(order), size)]
        hidden, starts = ragged_hidden_states(self._adapter, self._residency, inputs, batches,
                                              self._run_on, desc="zero-shot (layer-wise)")
        adapter = self._adapter
        results: list[tuple[float, bool]] = [(0.0, False)] * len(inputs)
        with self._residency.resident(adapter.final_norm, adapter.lm_head, device=self._run_on):
            for batch in batches:
                first = starts[batch[0]]
                rows = hidden[first:first + sum(len(inputs[i]) for i in batch)]
                for index, states in zip(batch, rows.split([len(inputs[i]) for i in batch])):
                    answer = answers[index]
                    results[index] = _score(adapter, states[-len(answer):].to(self._run_on),
                                            answer.to(self._run_on), self.softmax_dtype)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise PrunelabError("memory.evaluation=layerwise scores multiple-choice tasks only; a "
                            "task that generates text needs the model resident "
                            "(memory.evaluation=resident)")


@torch.no_grad()
def _score(adapter: ModelAdapter, states: torch.Tensor, answer: torch.Tensor,
           softmax_dtype: torch.dtype | None) -> tuple[float, bool]:
    """HFLM's answer for one request, from the hidden states at its answer positions."""
    logits = adapter.lm_head(adapter.final_norm(states))
    log_probs = F.log_softmax(logits, dim=-1, dtype=softmax_dtype)
    greedy = bool((log_probs.argmax(dim=-1) == answer).all())
    return float(log_probs.gather(1, answer.unsqueeze(-1)).sum()), greedy
