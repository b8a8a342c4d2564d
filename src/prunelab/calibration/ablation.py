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
    RESIDENT,
    Buffer,
    Residency,
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
    """One layer-wise pass of the unchanged model: module means, and what ``estimator`` needs.

    ``hidden`` (block 0's inputs) is overwritten with the last block's outputs. ``cosine``
    needs the residual stream around every module (the stream between a block's attention
    and MLP, the MLP norm's input, is kept in ``middles`` for the next block), ``entropy``
    the moments of the final states, ``kl`` the final states themselves (into ``final``).
    """

    def __init__(self, adapter: ModelAdapter, residency: Residency, hidden: Buffer,
                 block_kwargs: list[dict], batch_size: int, device: torch.device,
                 estimator: str, final: Buffer | None, middles: Buffer | None):
        layers = adapter.layers
        n = len(layers)
        self.estimator = estimator
        self.sums: list[list[torch.Tensor | None]] = [[None, None] for _ in range(n)]
        self.count = hidden.shape[0] * hidden.shape[1]
        # 1 - cos across module k (single) and across modules k, k+1 (pair), summed over tokens
        self.cos_single = torch.zeros(2 * n, dtype=torch.float64)
        self.cos_pair = torch.zeros(2 * n - 1, dtype=torch.float64)
        self.moments = ChannelMoments()
        self.final = final
        for index, block in enumerate(tqdm(adapter.decoder_layers, unit="block",
                                           desc="module removal: reference")):
            with residency.resident(block, device=device):
                self._run_block(index, layers[index], block, hidden, block_kwargs[index],
                                batch_size, device, middles)
        with residency.resident(adapter.final_norm, device=device):
            for start in range(0, hidden.shape[0], batch_size):
                states = adapter.final_norm(hidden[start:start + batch_size].to(device))
                if estimator == "entropy":
                    self.moments.update(states.double())  # differences need float64 sums
                if final is not None:
                    final[start:start + states.shape[0]] = states.to(final.device)

    def _run_block(self, index: int, layer, block: nn.Module, hidden: Buffer, kwargs: dict,
                   batch_size: int, device: torch.device, middles: Buffer | None) -> None:
        """Block ``index`` over every sample, in place, adding to the sums and cosines."""
        captured: list[torch.Tensor] = []  # attention output, MLP output
        middle: list[torch.Tensor] = []
        handles = [module.register_forward_hook(functools.partial(_store_output, captured))
                   for module in (layer.attention, layer.mlp)]
        if self.estimator == "cosine":
            handles.append(layer.mlp_norm.register_forward_pre_hook(
                functools.partial(_store_input, middle)))
        try:
            for start in range(0, hidden.shape[0], batch_size):
                before = hidden[start:start + batch_size].to(device)
                after = block_output(block, before, kwargs)
                for j, out in enumerate(captured):
                    total = out.double().sum(dim=(0, 1))
                    self.sums[index][j] = total if self.sums[index][j] is None \
                        else self.sums[index][j] + total
                captured.clear()
                if self.estimator == "cosine":
                    self._add_cosines(index, before, middle.pop(), after, middles, start)
                hidden[start:start + after.shape[0]] = after.to(hidden.device)
        finally:
            for handle in handles:
                handle.remove()

    def _add_cosines(self, index: int, before: torch.Tensor, middle: torch.Tensor,
                     after: torch.Tensor, middles: Buffer, start: int) -> None:
        """Streams 2l (block input), 2l+1 (middle), 2l+2 (output), and 2l-1 (last middle)."""
        k = 2 * index
        self.cos_single[k] += _one_minus_cos(before, middle)
        self.cos_single[k + 1] += _one_minus_cos(middle, after)
        self.cos_pair[k] += _one_minus_cos(before, after)
        rows = slice(start, start + middle.shape[0])
        if index > 0:
            self.cos_pair[k - 1] += _one_minus_cos(middles[rows].to(middle.device), middle)
        middles[rows] = middle.to(middles.device)

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
                           residency: Residency = RESIDENT,
                           desc: str = "module removal") -> ModuleEffects:
    """Score every sub-layer (and adjacent pair when ``pairs``) by removing it.

    Layer-wise: every pass runs one block over all samples before the next, so a streamed
    model (``residency``) holds one block; it reads a block once per removal that reaches it
    (``2L(L+1)`` block reads with pairs). The hidden states of all samples live in buffers
    (three for ``kl``, two otherwise) that spill to disk past the residency's budget.
    """
    check_estimator(estimator)
    layers = adapter.layers
    if not all(layer.has_attention and layer.has_mlp for layer in layers):
        raise PrunelabError("module effects are measured on the unpruned model; this one "
                            "already lacks whole sub-layers")
    n = len(layers)
    storage = torch.device("cpu") if residency.weights is not None else device
    count = 3 if estimator == "kl" else 2
    with residency.resident(adapter.embed_tokens, device=device):
        shape = (*samples.shape, adapter.config.hidden_size)
        dtype = next(adapter.embed_tokens.parameters()).dtype
        buffers = residency.buffers(shape, dtype, storage, count=count)
        inputs, block_kwargs = capture_block_inputs(adapter, samples, batch_size, device,
                                                    buffers[0])
    block_kwargs = to_device(block_kwargs, device)
    work = buffers[1]
    if estimator == "cosine":  # no removal runs: block 0's inputs need not be kept
        reference = _Reference(adapter, residency, inputs, block_kwargs, batch_size, device,
                               estimator, None, work)
        single = reference.cos_single / reference.count
        pair = reference.cos_pair / reference.count if pairs else None
        return ModuleEffects(single.view(n, 2), pair)
    _copy_rows(inputs, work, batch_size)
    reference = _Reference(adapter, residency, work, block_kwargs, batch_size, device,
                           estimator, buffers[2] if estimator == "kl" else None, None)
    modules = [(layer.attention, layer.mlp) for layer in layers]
    entropy_full = gaussian_entropy(reference.moments) if estimator == "entropy" else 0.0
    single = torch.zeros(2 * n, dtype=torch.float64)
    pair = torch.zeros(2 * n - 1, dtype=torch.float64)
    blocks = adapter.decoder_layers
    head = (adapter.final_norm, adapter.lm_head) if estimator == "kl" else (adapter.final_norm,)
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
                _copy_rows(inputs, work, batch_size)
                with replaced_by_mean(patched):
                    for later in range(index, n):
                        with residency.resident(blocks[later], device=device):
                            forward_block(blocks[later], work, block_kwargs[later],
                                          batch_size, device, outputs=work)
                moments, kl = ChannelMoments(), 0.0
                with residency.resident(*head, device=device):
                    for start in range(0, work.shape[0], batch_size):
                        final = adapter.final_norm(work[start:start + batch_size].to(device))
                        if estimator == "entropy":
                            moments.update(final.double())
                        else:
                            kl += _token_kl(reference.final[start:start + final.shape[0]]
                                            .to(device), final, adapter.lm_head)
                target[slot] = (abs(entropy_full - gaussian_entropy(moments))
                                if estimator == "entropy" else kl / reference.count)
                bar.update()
            with residency.resident(blocks[index], device=device):
                forward_block(blocks[index], inputs, block_kwargs[index], batch_size, device,
                              outputs=inputs)  # the next block's inputs, in place
    return ModuleEffects(single.view(n, 2), pair if pairs else None)


def _copy_rows(source: Buffer, target: Buffer, rows: int) -> None:
    """``target[:] = source``, a slice of rows at a time (either may be spilled to disk)."""
    for start in range(0, source.shape[0], rows):
        target[start:start + rows] = source[start:start + rows]
