"""How much the model changes when a sub-layer is replaced by its mean output.

Interaction-guided pruning asks the model itself which modules matter: every sub-layer ``m``
(the attention or the MLP of a block) is removed, i.e. its output replaced by its mean over the
calibration tokens (what bias compensation leaves of a wholly removed module), and the change
of the model is measured with the other modules intact. Estimators (METHODS.md):

- ``entropy``: ``|H(Z_full) - H(Z_without_m)|`` with ``H(Z) = sum_c log std_c(Z)``, the
  Gaussian entropy (up to constants) of the final hidden states ``Z`` (the final norm's
  output, what the LM head reads) over all calibration tokens;
- ``kl``: ``E_tokens KL(p_full || p_without_m)`` of the next-token distributions;
- ``cosine``: ``E_tokens [1 - cos(h_in, h_out)]`` across the module in the unchanged model
  (LLM-Drop's criterion): no extra forward passes.

Adjacent modules in execution order (attention l, MLP l, attention l+1, ...) are also removed
in pairs, giving ``s_{m,m'}``; :meth:`ModuleEffects.folded` turns them into interactions.
Removing a module of block ``l`` changes nothing before block ``l``, so the inputs of the
current block are kept and each removal runs only blocks ``l..L-1``: ``2L(L+1)`` block passes
for singles and pairs, against ``L`` per pass for the full model re-run.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from prunelab.calibration.statistics import ChannelMoments
from prunelab.errors import PrunelabError, unknown_name_message
from prunelab.models.adapters import ModelAdapter
from prunelab.models.layerwise import (
    block_output,
    capture_block_inputs,
    forward_block,
    to_device,
)
from prunelab.models.lm_head import tokens_per_chunk

ESTIMATORS = ("entropy", "kl", "cosine")


@dataclass
class ModuleEffects:
    """Module scores: ``single[l, j]`` (j = 0 attention, 1 MLP) and adjacent ``pair[k]``.

    Modules are numbered in execution order, ``k = 2 l + j``; ``pair[k]`` removes modules ``k``
    and ``k + 1`` together. ``pair`` is None when pairs were not measured.
    """

    single: torch.Tensor
    pair: torch.Tensor | None = None

    def interactions(self) -> torch.Tensor:
        """``I(k, k+1) = s_{k,k+1} - s_k - s_{k+1}`` for every adjacent pair."""
        if self.pair is None:
            raise RuntimeError("interactions need the pair removals, which were not measured")
        flat = self.single.flatten()
        return self.pair - flat[:-1] - flat[1:]

    def folded(self) -> torch.Tensor:
        """``s_m + 1/2 sum_{m' adjacent} I(m, m')`` per module, as ``[num_layers, 2]``.

        Each pair's interaction is shared equally by its two modules (the pairwise Shapley
        split), so a module whose loss a neighbour covers (negative interaction: removing both
        hurts less than the sum) becomes cheaper to remove.
        """
        flat = self.single.flatten().clone()
        shared = self.interactions() / 2
        flat[:-1] += shared
        flat[1:] += shared
        return flat.view_as(self.single)


def check_estimator(name: str) -> None:
    """Refuse an unknown estimator, listing the valid ones."""
    if name not in ESTIMATORS:
        raise PrunelabError(unknown_name_message("module estimator", name, ESTIMATORS))


@contextlib.contextmanager
def replaced_by_mean(modules: list[tuple[nn.Module, torch.Tensor]]) -> Iterator[None]:
    """Make each module output its mean (a constant vector per token) while inside."""

    def hook_for(mean: torch.Tensor):
        def hook(_module, _inputs, output):
            if isinstance(output, tuple):
                return (mean.to(output[0].dtype).expand_as(output[0]), *output[1:])
            return mean.to(output.dtype).expand_as(output)

        return hook

    handles = [module.register_forward_hook(hook_for(mean)) for module, mean in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Reference:
    """One pass of the unchanged model: module means, and what ``estimator`` compares.

    ``cosine`` needs the residual stream around every module, ``entropy`` the moments of the
    final states, ``kl`` the final states themselves; each is gathered only for its estimator.
    """

    def __init__(self, adapter: ModelAdapter, inputs: torch.Tensor, block_kwargs: list[dict],
                 batch_size: int, estimator: str):
        layers = adapter.layers
        n = len(layers)
        self.estimator = estimator
        self.sums = [[None, None] for _ in range(n)]
        self.count = 0
        # 1 - cos across module k (single) and across modules k, k+1 (pair), summed over tokens
        self.cos_single = torch.zeros(2 * n, dtype=torch.float64)
        self.cos_pair = torch.zeros(2 * n - 1, dtype=torch.float64)
        self.moments = ChannelMoments()
        self.final = torch.empty_like(inputs) if estimator == "kl" else None
        captured: list[list[torch.Tensor]] = [[] for _ in layers]  # per block: attn, mlp out
        handles = [module.register_forward_hook(functools.partial(_store_output, store))
                   for layer, store in zip(layers, captured)
                   for module in (layer.attention, layer.mlp)]
        # the residual stream between a block's attention and MLP: the MLP norm's input
        self.middle: list[list[torch.Tensor]] = [[] for _ in layers]
        if estimator == "cosine":
            handles += [layer.mlp_norm.register_forward_pre_hook(
                functools.partial(_store_input, store))
                for layer, store in zip(layers, self.middle)]
        try:
            for start in range(0, inputs.shape[0], batch_size):
                self._add_batch(adapter, inputs[start:start + batch_size], block_kwargs,
                                captured, start)
        finally:
            for handle in handles:
                handle.remove()

    def _add_batch(self, adapter: ModelAdapter, hidden: torch.Tensor, block_kwargs: list[dict],
                   captured: list[list[torch.Tensor]], start: int) -> None:
        streams = [hidden]  # residual stream before module 0, after module 0, 1, ... (cosine)
        for index, block in enumerate(adapter.decoder_layers):
            hidden = block_output(block, hidden, block_kwargs[index])
            for j, out in enumerate(captured[index]):
                total = out.double().sum(dim=(0, 1))
                self.sums[index][j] = total if self.sums[index][j] is None \
                    else self.sums[index][j] + total
            if self.estimator == "cosine":
                streams += [self.middle[index].pop(), hidden]
            captured[index].clear()
        self.count += hidden.shape[0] * hidden.shape[1]
        for k in range(len(streams) - 1):
            self.cos_single[k] += _one_minus_cos(streams[k], streams[k + 1])
            if k + 2 < len(streams):
                self.cos_pair[k] += _one_minus_cos(streams[k], streams[k + 2])
        final = adapter.final_norm(hidden)
        if self.estimator == "entropy":
            self.moments.update(final.double())  # entropy differences need float64 sums
        if self.final is not None:
            self.final[start:start + hidden.shape[0]] = final

    def mean(self, layer: int, module: int) -> torch.Tensor:
        """Mean output of a sub-layer over every calibration token."""
        return self.sums[layer][module] / self.count


def _store_output(store: list[torch.Tensor], _module, _inputs, output) -> None:
    store.append(output[0] if isinstance(output, tuple) else output)


def _store_input(store: list[torch.Tensor], _module, inputs) -> None:
    store.append(inputs[0])


def _one_minus_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((1 - F.cosine_similarity(a.double(), b.double(), dim=-1)).sum())


def gaussian_entropy(moments: ChannelMoments) -> float:
    """``sum_c log std_c``: the entropy of a diagonal Gaussian up to constants."""
    return float(0.5 * moments.result()["var"].clamp_min(1e-300).log().sum())


def _token_kl(reference: torch.Tensor, changed: torch.Tensor, head: nn.Module) -> float:
    """Sum over tokens of KL(p_reference || p_changed) from final hidden states.

    In chunks of tokens (models/lm_head.py): float64 log-probabilities over a vocabulary are
    large.
    """
    reference = reference.reshape(-1, reference.shape[-1])
    changed = changed.reshape(-1, changed.shape[-1])
    chunk = tokens_per_chunk(head.weight.shape[0], bytes_per_value=8)
    total = 0.0
    for start in range(0, reference.shape[0], chunk):
        log_p = F.log_softmax(head(reference[start:start + chunk]).double(), dim=-1)
        log_q = F.log_softmax(head(changed[start:start + chunk]).double(), dim=-1)
        total += float((log_p.exp() * (log_p - log_q)).sum())
    return total


@torch.no_grad()
def measure_module_effects(adapter: ModelAdapter, samples: torch.Tensor, estimator: str,
                           pairs: bool, batch_size: int, device: torch.device,
                           desc: str = "module removal") -> ModuleEffects:
    """Score every sub-layer (and adjacent pair when ``pairs``) by removing it."""
    check_estimator(estimator)
    layers = adapter.layers
    if not all(layer.has_attention and layer.has_mlp for layer in layers):
        raise PrunelabError("module effects are measured on the unpruned model; this one "
                            "already lacks whole sub-layers")
    n = len(layers)
    model_device = next(adapter.embed_tokens.parameters()).device
    inputs, block_kwargs = capture_block_inputs(adapter, samples, batch_size, model_device)
    block_kwargs = to_device(block_kwargs, device)
    reference = _Reference(adapter, inputs, block_kwargs, batch_size, estimator)
    if estimator == "cosine":
        single = reference.cos_single / reference.count
        pair = reference.cos_pair / reference.count if pairs else None
        return ModuleEffects(single.view(n, 2), pair)
    modules = [(layer.attention, layer.mlp) for layer in layers]
    entropy_full = gaussian_entropy(reference.moments) if estimator == "entropy" else 0.0
    single = torch.zeros(2 * n, dtype=torch.float64)
    pair = torch.zeros(2 * n - 1, dtype=torch.float64)
    blocks = adapter.decoder_layers
    total = 2 * n + (2 * n - 1 if pairs else 0)
    with tqdm(total=total, desc=desc, unit="removal") as bar:
        for index in range(n):
            first = 2 * index
            removals = [((first,), single, first), ((first + 1,), single, first + 1)]
            if pairs:
                removals.append(((first, first + 1), pair, first))
                if index + 1 < n:
                    removals.append(((first + 1, first + 2), pair, first + 1))
            for removed, target, slot in removals:
                patched = [(modules[k // 2][k % 2], reference.mean(k // 2, k % 2))
                           for k in removed]
                moments, kl = ChannelMoments(), 0.0
                with replaced_by_mean(patched):
                    for start in range(0, inputs.shape[0], batch_size):
                        hidden = inputs[start:start + batch_size]
                        for later in range(index, n):
                            hidden = block_output(blocks[later], hidden,
                                                  block_kwargs[later])
                        final = adapter.final_norm(hidden)
                        if estimator == "entropy":
                            moments.update(final.double())
                        else:
                            kl += _token_kl(reference.final[start:start + final.shape[0]],
                                            final, adapter.lm_head)
                target[slot] = (abs(entropy_full - gaussian_entropy(moments))
                                if estimator == "entropy" else kl / reference.count)
                bar.update()
            forward_block(blocks[index], inputs, block_kwargs[index], batch_size, device,
                          outputs=inputs)  # the next block's inputs, in place
    return ModuleEffects(single.view(n, 2), pair if pairs else None)
