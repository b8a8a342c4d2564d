"""A (pruned) LLaMA-style model as llama.cpp's ``deci`` graph sees it: geometry and tensors.

llama.cpp's ``deci`` architecture (the one Llama-3.1-Nemotron-51B uses) reads the query-head
count, KV-head count and feed-forward width per layer, but its graph differs from prunelab's
in four places. Each is bridged by an identity that leaves the logits unchanged (checked
against llama.cpp in tests/test_export_gguf.py):

1. RoPE layout. Hugging Face rotates the two halves of a head against each other
   (``rotate_half``); llama.cpp's NORM rope rotates adjacent pairs. Within every head of q and
   k, row ``i`` of the first half moves to ``2i`` and row ``i`` of the second half to
   ``2i + 1``: the same rotation then acts on the same coordinate pairs, and ``q . k``, a sum
   over all coordinates, does not depend on their order.
2. A removed MLP (``n_ff = 0``): the deci graph then skips the rest of the layer, dropping
   its attention output too (and aborts in the last layer). It is written as a 1-wide MLP with
   zero gate, up and down weights: ``down(silu(0) * 0) = 0``, so the MLP adds exactly its
   ``ffn_down.bias``, which carries prunelab's compensation bias of the removed MLP.
3. A removed attention (``n_head = 0``) runs nothing in llama.cpp, bias included. Its
   compensation bias ``b`` is added to the previous layer's ``ffn_down.bias``: that layer's
   output, the residual this layer's MLP reads, becomes ``x + b`` as in prunelab. Layer 0 has
   no previous layer (and llama.cpp refuses ``n_head = 0`` there), so it keeps one zero head:
   zero q, k, v and o give an output of exactly 0, plus ``b`` as its ``attn_output.bias``.
4. Uneven GQA groups. llama.cpp needs ``n_head = g * n_head_kv`` with query head ``h`` reading
   KV head ``h // g``; prunelab allows any number of query heads per KV head. A KV head with
   ``c`` query heads becomes ``ceil(c / g)`` copies of itself (repeated k/v rows), each serving
   ``g`` query slots; slots left over are zero heads (zero q rows attend uniformly, zero o
   columns output nothing). Query heads are reordered so each group is contiguous, which the
   sum over heads in o_proj does not notice. The ``g`` with the fewest MACs is chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prunelab.errors import PrunelabError
from prunelab.models.adapters import LayerAdapter, ModelAdapter
from prunelab.models.macs import attention_macs


@dataclass(frozen=True)
class GroupLayout:
    """One layer's query and KV heads in llama.cpp's even grouping."""

    #: source query head of every llama.cpp query head; ``None`` is a zero (padding) head
    query_heads: tuple[int | None, ...]
    #: source KV head of every llama.cpp KV head (a KV head may appear more than once)
    kv_heads: tuple[int, ...]

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return len(self.query_heads) // len(self.kv_heads)

    @property
    def padding_heads(self) -> int:
        """Zero query heads added to even out the groups."""
        return sum(h is None for h in self.query_heads)

    @property
    def repeated_kv_heads(self) -> int:
        """KV heads written more than once."""
        return len(self.kv_heads) - len(set(self.kv_heads))


def even_groups(kv_map: list[int], hidden: int, head_dim: int, context: float) -> GroupLayout:
    """The even grouping of ``kv_map`` (KV head of each query head) with the fewest MACs.

    ``context`` is the attended length the MAC count assumes (models/macs.py). A regular
    grouping (every KV head with the same number of query heads) is returned unchanged.
    """
    members: dict[int, list[int]] = {}
    for head, kv in enumerate(kv_map):
        members.setdefault(kv, []).append(head)
    best, best_macs = None, math.inf
    for g in range(1, max(len(m) for m in members.values()) + 1):
        query: list[int | None] = []
        kv_heads: list[int] = []
        for kv in sorted(members):
            heads = members[kv]
            for start in range(0, len(heads), g):
                chunk = heads[start:start + g]
                query += chunk + [None] * (g - len(chunk))
                kv_heads.append(kv)
        macs = attention_macs(hidden, head_dim, len(query), len(kv_heads), context)
        if macs < best_macs:
            best, best_macs = GroupLayout(tuple(query), tuple(kv_heads)), macs
    return best


@dataclass(frozen=True)
class DeciLayer:
    """What one layer becomes in the GGUF."""

    layout: GroupLayout | None  # None: the attention is absent (n_head = 0)
    n_ff: int
    zero_mlp: bool  # a 1-wide zero MLP stands in for a removed one (identity 2)

    @property
    def n_head(self) -> int:
        return 0 if self.layout is None else len(self.layout.query_heads)

    @property
    def n_head_kv(self) -> int:
        return 0 if self.layout is None else len(self.layout.kv_heads)

    @property
    def zero_head(self) -> bool:
        """Layer 0 kept one zero head for a removed attention (identity 3)."""
        return self.layout is not None and self.layout.padding_heads == self.n_head


@dataclass
class DeciModel:
    """Per-layer geometry and every tensor of the GGUF, in float32, in torch's layout."""

    layers: list[DeciLayer]
    tensors: dict[str, torch.Tensor]
    head_dim: int
    tied_embeddings: bool

    def overhead_macs(self, adapter: ModelAdapter, context: float) -> float:
        """MACs per token the identities add over the pruned model (padding, zero MLPs)."""
        hidden, extra = adapter.config.hidden_size, 0.0
        for deci, layer in zip(self.layers, adapter.layers):
            g = layer.geometry
            if deci.layout is not None:
                extra += (attention_macs(hidden, self.head_dim, deci.n_head, deci.n_head_kv,
                                         context)
                          - attention_macs(hidden, self.head_dim, g.num_heads, g.num_kv_heads,
                                           context))
            if deci.zero_mlp:
                extra += 3 * hidden
        return extra


def rope_pairs_order(head_dim: int) -> torch.Tensor:
    """Row order inside one head that turns HF's half-split RoPE layout into adjacent pairs."""
    half = head_dim // 2
    return torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()


def _per_head_rows(tensor: torch.Tensor, heads: tuple[int | None, ...], head_dim: int,
                   rope: bool) -> torch.Tensor:
    """Rows of ``tensor`` (out-features first) for ``heads``, zeros for ``None``."""
    blocks = tensor.view(-1, head_dim, *tensor.shape[1:])
    zero = torch.zeros_like(blocks[0])
    out = torch.stack([blocks[h] if h is not None else zero for h in heads])
    if rope:
        out = out[:, rope_pairs_order(head_dim)]
    return out.reshape(len(heads) * head_dim, *tensor.shape[1:])


def _bias(linear: torch.nn.Linear | None) -> torch.Tensor | None:
    return None if linear is None or linear.bias is None else linear.bias.detach().float()


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def _compensation(layer: LayerAdapter, name: str) -> torch.Tensor | None:
    bias = getattr(layer.layer, name, None)  # PrunelabDecoderLayer's attn_out_bias / mlp_out_bias
    return None if bias is None else bias.detach().float()


def deci_model(adapter: ModelAdapter, context: float = 512.0) -> DeciModel:
    """Geometry and tensors of ``adapter``'s model in the deci graph (the module docstring).

    ``context`` is the attended length at which uneven GQA groups are priced (identity 4).
    """
    config = adapter.config
    hidden, head_dim = config.hidden_size, adapter.head_dim
    layers = adapter.layers
    tensors: dict[str, torch.Tensor] = {
        "token_embd.weight": adapter.embed_tokens.weight.detach().float(),
        "output_norm.weight": adapter.final_norm.weight.detach().float(),
    }
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if not tied:
        tensors["output.weight"] = adapter.lm_head.weight.detach().float()
    geometry: list[DeciLayer] = []
    down_bias: list[torch.Tensor | None] = []
    for index, layer in enumerate(layers):
        prefix = f"blk.{index}."
        attn_bias = _compensation(layer, "attn_out_bias")
        if layer.has_attention:
            layout = even_groups(layer.kv_head_of(), hidden, head_dim, context)
            tensors.update(_attention_tensors(prefix, layer, layout, head_dim))
            out_bias = _add(_bias(layer.o_proj), attn_bias)
            if out_bias is not None:
                tensors[prefix + "attn_output.bias"] = out_bias
        elif index == 0:
            layout = GroupLayout((None,), (0,))
            tensors.update(_zero_head_tensors(prefix, hidden, head_dim))
            if attn_bias is not None:
                tensors[prefix + "attn_output.bias"] = attn_bias
        else:
            layout = None
            if attn_bias is not None:  # identity 3: into the previous layer's output
                down_bias[index - 1] = _add(down_bias[index - 1], attn_bias)
        mlp_bias = _compensation(layer, "mlp_out_bias")
        if layer.has_mlp:
            tensors.update(_mlp_tensors(prefix, layer))
            n_ff, zero_mlp = layer.down_proj.in_features, False
            down_bias.append(_add(_bias(layer.down_proj), mlp_bias))
        else:
            layer_bias = bool(getattr(config, "mlp_bias", False))
            tensors.update(_zero_mlp_tensors(prefix, hidden, layer_bias))
            n_ff, zero_mlp = 1, True
            down_bias.append(mlp_bias)
        geometry.append(DeciLayer(layout, n_ff, zero_mlp))
    for index, bias in enumerate(down_bias):
        if bias is not None:
            tensors[f"blk.{index}.ffn_down.bias"] = bias
    return DeciModel(geometry, tensors, head_dim, tied)


def _attention_tensors(prefix: str, layer: LayerAdapter, layout: GroupLayout,
                       head_dim: int) -> dict[str, torch.Tensor]:
    out = {prefix + "attn_norm.weight": layer.attn_norm.weight.detach().float()}
    q, k, v, o = layer.q_proj, layer.k_proj, layer.v_proj, layer.o_proj
    out[prefix + "attn_q.weight"] = _per_head_rows(q.weight.detach().float(), layout.query_heads,
                                                   head_dim, rope=True)
    out[prefix + "attn_k.weight"] = _per_head_rows(k.weight.detach().float(), layout.kv_heads,
                                                   head_dim, rope=True)
    out[prefix + "attn_v.weight"] = _per_head_rows(v.weight.detach().float(), layout.kv_heads,
                                                   head_dim, rope=False)
    for name, linear, heads, rope in (("attn_q", q, layout.query_heads, True),
                                      ("attn_k", k, layout.kv_heads, True),
                                      ("attn_v", v, layout.kv_heads, False)):
        if linear.bias is not None:
            out[prefix + name + ".bias"] = _per_head_rows(linear.bias.detach().float(), heads,
                                                          head_dim, rope)
    columns = _per_head_rows(o.weight.detach().float().T.contiguous(), layout.query_heads,
                             head_dim, rope=False)
    out[prefix + "attn_output.weight"] = columns.T.contiguous()
    return out


def _zero_head_tensors(prefix: str, hidden: int, head_dim: int) -> dict[str, torch.Tensor]:
    zeros = torch.zeros(head_dim, hidden)
    return {prefix + "attn_norm.weight": torch.ones(hidden),
            prefix + "attn_q.weight": zeros, prefix + "attn_k.weight": zeros.clone(),
            prefix + "attn_v.weight": zeros.clone(),
            prefix + "attn_output.weight": torch.zeros(hidden, head_dim)}


def _mlp_tensors(prefix: str, layer: LayerAdapter) -> dict[str, torch.Tensor]:
    out = {prefix + "ffn_norm.weight": layer.mlp_norm.weight.detach().float()}
    for name, linear in (("ffn_gate", layer.gate_proj), ("ffn_up", layer.up_proj),
                         ("ffn_down", layer.down_proj)):
        out[prefix + name + ".weight"] = linear.weight.detach().float()
    for name, linear in (("ffn_gate", layer.gate_proj), ("ffn_up", layer.up_proj)):
        if linear.bias is not None:
            out[prefix + name + ".bias"] = linear.bias.detach().float()
    return out


def _zero_mlp_tensors(prefix: str, hidden: int, layer_bias: bool) -> dict[str, torch.Tensor]:
    out = {prefix + "ffn_norm.weight": torch.ones(hidden),
           prefix + "ffn_gate.weight": torch.zeros(1, hidden),
           prefix + "ffn_up.weight": torch.zeros(1, hidden),
           prefix + "ffn_down.weight": torch.zeros(hidden, 1)}
    if layer_bias:
        out[prefix + "ffn_gate.bias"] = torch.zeros(1)
        out[prefix + "ffn_up.bias"] = torch.zeros(1)
    return out


def check_representable(config) -> None:
    """Refuse, naming the feature, a model the deci graph cannot run exactly."""
    problems = []
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        problems.append(f"its MLP activation is {act!r} (the deci graph runs SiLU-gated MLPs)")
    if getattr(config, "qk_norm", False) or getattr(config, "use_qk_norm", False):
        problems.append("it normalises q and k per head (q/k norms), which deci has no tensor for")
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) \
            and int(window) < int(config.max_position_embeddings):
        problems.append(f"it uses sliding-window attention ({window} of "
                        f"{config.max_position_embeddings} positions), which deci does not")
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        problems.append(f"its RoPE scaling is {rope_type!r}; the export writes unscaled RoPE only")
    if problems:
        raise PrunelabError(f"{config.model_type} cannot be exported to llama.cpp's deci graph "
                            f"exactly: {'; '.join(problems)}. For an unpruned model use "
                            "llama.cpp's own converter (convert_hf_to_gguf.py).")


def rope_theta(config) -> float:
    """RoPE base frequency, from transformers 5's ``rope_parameters`` or the older field."""
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
