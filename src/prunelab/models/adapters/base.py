"""Contracts between prunelab and a model family.

A :class:`ModelAdapter` exposes the decoder blocks, embeddings, final norm and head; a
:class:`LayerAdapter` exposes one block's projections, norms and the two hook points every
method reads (the inputs of ``o_proj`` and ``down_proj``, METHODS.md's ``A`` and ``a``).
Head geometry is read from the weights, not from the config, so an adapter describes pruned
blocks (fewer heads, narrower MLP) as truthfully as dense ones.

A sub-layer's *output* is what its module returns (the attention's ``o_proj`` output, the
MLP's ``down_proj`` output); families with post-norms (Gemma) normalise it before the residual
add (:attr:`LayerAdapter.attn_post_norm`), so bias compensation, which makes the expected
output exact, is added before that norm.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import UnsupportedModelError, did_you_mean
from prunelab.registry import Registry


@dataclass(frozen=True)
class LayerGeometry:
    """Sizes of one decoder block as its weights currently are."""

    hidden_size: int
    head_dim: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int


class LayerAdapter(ABC):
    """One decoder block of a pre-norm, gated-MLP transformer."""

    def __init__(self, layer: nn.Module, head_dim: int):
        self.layer = layer
        self.head_dim = head_dim

    @property
    @abstractmethod
    def attention(self) -> nn.Module:
        """The attention sub-layer (its output is added to the residual stream)."""

    @property
    @abstractmethod
    def mlp(self) -> nn.Module:
        """The MLP sub-layer (its output is added to the residual stream)."""

    @property
    @abstractmethod
    def attn_norm(self) -> nn.Module:
        """Norm applied to the block input before attention (``n1``)."""

    @property
    @abstractmethod
    def mlp_norm(self) -> nn.Module:
        """Norm applied before the MLP (``n2``)."""

    @property
    def attn_post_norm(self) -> nn.Module | None:
        """Norm applied to the attention output before the residual add (None: no such norm)."""
        return None

    @property
    def mlp_post_norm(self) -> nn.Module | None:
        """Norm applied to the MLP output before the residual add (None: no such norm)."""
        return None

    @property
    def activation(self) -> nn.Module:
        """The gated MLP's activation: ``a = act(gate(x)) * up(x)``."""
        return self.mlp.act_fn

    def norm_scale(self, norm: nn.Module) -> torch.Tensor:
        """The per-channel factor an RMSNorm of this family multiplies by (its weight)."""
        return norm.weight

    def apply_norm(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``norm(x)`` from its weights, without calling the module (no hook sees it)."""
        return F.rms_norm(x, (x.shape[-1],), self.norm_scale(norm).to(x.dtype), norm_eps(norm))

    @abstractmethod
    def attention_norms(self) -> dict[str, nn.Module]:
        """Norms that exist with the attention sub-layer, by dotted path in the block."""

    @abstractmethod
    def mlp_norms(self) -> dict[str, nn.Module]:
        """Norms that exist with the MLP sub-layer, by dotted path in the block."""

    @property
    @abstractmethod
    def q_proj(self) -> nn.Linear: ...

    @property
    @abstractmethod
    def k_proj(self) -> nn.Linear: ...

    @property
    @abstractmethod
    def v_proj(self) -> nn.Linear: ...

    @property
    @abstractmethod
    def o_proj(self) -> nn.Linear:
        """Attention output projection; its input is the concatenated per-head outputs ``A``."""

    @property
    @abstractmethod
    def gate_proj(self) -> nn.Linear: ...

    @property
    @abstractmethod
    def up_proj(self) -> nn.Linear: ...

    @property
    @abstractmethod
    def down_proj(self) -> nn.Linear:
        """MLP output projection; its input is ``a = silu(gate) * up``."""

    @property
    def has_attention(self) -> bool:
        """False when pruning removed the whole attention sub-layer."""
        return self.attention is not None

    @property
    def has_mlp(self) -> bool:
        """False when pruning removed the whole MLP sub-layer."""
        return self.mlp is not None

    def projections(self) -> dict[str, nn.Linear]:
        """The prunable projections present in this block, by their METHODS.md names."""
        names = []
        if self.has_attention:
            names += ["q_proj", "k_proj", "v_proj", "o_proj"]
        if self.has_mlp:
            names += ["gate_proj", "up_proj", "down_proj"]
        return {name: getattr(self, name) for name in names}

    @property
    def geometry(self) -> LayerGeometry:
        """Current sizes, derived from the weight shapes (0 for a removed sub-layer)."""
        attn, mlp = self.has_attention, self.has_mlp
        return LayerGeometry(
            hidden_size=self.hidden_size,
            head_dim=self.head_dim,
            num_heads=self.q_proj.out_features // self.head_dim if attn else 0,
            num_kv_heads=self.k_proj.out_features // self.head_dim if attn else 0,
            intermediate_size=self.down_proj.in_features if mlp else 0,
        )

    @property
    @abstractmethod
    def hidden_size(self) -> int:
        """Width of the residual stream."""

    def kv_head_of(self) -> list[int]:
        """For each query head, the KV head it attends with (contiguous GQA groups)."""
        g = self.geometry
        return [h * g.num_kv_heads // g.num_heads for h in range(g.num_heads)]

    def parameters_per_head(self) -> int:
        """Parameters of one query head: its q_proj rows (with bias) and o_proj columns."""
        return self.head_dim * (_row_parameters(self.q_proj) + self.o_proj.out_features)

    def parameters_per_kv_head(self) -> int:
        """Parameters of one KV head: its k_proj and v_proj rows (with biases)."""
        return self.head_dim * (_row_parameters(self.k_proj) + _row_parameters(self.v_proj))

    def parameters_per_channel(self) -> int:
        """Parameters of one MLP channel: its gate/up rows (with biases) and down column."""
        return (_row_parameters(self.gate_proj) + _row_parameters(self.up_proj)
                + self.down_proj.out_features)

    def prunable_parameter_count(self) -> int:
        """Parameters (weights and biases) of the seven projections."""
        return sum(p.numel() for lin in self.projections().values() for p in lin.parameters())


def norm_eps(norm: nn.Module) -> float:
    """The epsilon of an RMSNorm module (LLaMA names it ``variance_epsilon``, others ``eps``)."""
    return getattr(norm, "variance_epsilon", getattr(norm, "eps", 0.0))


def _row_parameters(linear: nn.Linear) -> int:
    return linear.in_features + (1 if linear.bias is not None else 0)


class ModelAdapter(ABC):
    """A whole causal LM of one family."""

    layer_adapter_cls: type[LayerAdapter]
    #: The model_type surgery turns this family into (models/pruned).
    pruned_model_type: str

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    @property
    @abstractmethod
    def decoder_layers(self) -> nn.ModuleList:
        """The list of decoder blocks, in order."""

    @property
    @abstractmethod
    def embed_tokens(self) -> nn.Module: ...

    @property
    @abstractmethod
    def final_norm(self) -> nn.Module: ...

    @property
    @abstractmethod
    def lm_head(self) -> nn.Module: ...

    @property
    def head_dim(self) -> int:
        """Per-head width from the config (``head_dim`` or hidden / heads)."""
        explicit = getattr(self.config, "head_dim", None)
        return explicit or self.config.hidden_size // self.config.num_attention_heads

    @property
    def context_length(self) -> int:
        """Longest sequence the model's position encoding supports."""
        return int(self.config.max_position_embeddings)

    @property
    def layers(self) -> list[LayerAdapter]:
        """One :class:`LayerAdapter` per decoder block."""
        return [self.layer_adapter_cls(layer, self.head_dim) for layer in self.decoder_layers]

    def prunable_parameter_count(self) -> int:
        """Parameters of q/k/v/o/gate/up/down over all blocks (METHODS.md's ratio base)."""
        return sum(layer.prunable_parameter_count() for layer in self.layers)

    def total_parameter_count(self) -> int:
        """All parameters, tied embeddings counted once."""
        return sum(p.numel() for p in self.model.parameters())

    @classmethod
    def check_config(cls, config) -> None:
        """Refuse a variant of the family this adapter does not handle (none by default)."""
        return None


class PrunedLayerAdapter(LayerAdapter):
    """A block of a pruned model: sub-layers may be absent, query heads unevenly grouped.

    Its width comes from the model config (a block may have neither sub-layer), its query
    heads' KV heads from the attention's ``kv_map``.
    """

    def __init__(self, layer: nn.Module, head_dim: int, hidden: int):
        super().__init__(layer, head_dim)
        self._hidden = hidden

    @property
    def hidden_size(self) -> int:
        return self._hidden

    def kv_head_of(self) -> list[int]:
        return [] if self.attention is None else list(self.attention.kv_map)

    @abstractmethod
    def set_compensation(self, source: LayerAdapter, attention: torch.Tensor | None,
                         mlp: torch.Tensor | None) -> None:
        """Add FLAP's compensation biases (constants added to each sub-layer's output).

        ``source`` is the block the pruned one was cut from (its post-norms turn the
        constant of a wholly removed sub-layer into what that sub-layer adds).
        """


class PrunedModelAdapter(ModelAdapter):
    """A model produced by prunelab's surgery: its blocks are :class:`PrunedLayerAdapter`."""

    layer_adapter_cls: type[PrunedLayerAdapter]

    @property
    def layers(self) -> list[LayerAdapter]:
        hidden = self.config.hidden_size
        return [self.layer_adapter_cls(layer, self.head_dim, hidden)
                for layer in self.decoder_layers]


ADAPTERS: Registry[ModelAdapter] = Registry(
    "model architecture", "model_type of a Hugging Face config -> ModelAdapter subclass",
    base_cls=ModelAdapter)
#: model_types prunelab knows and refuses, with what is missing for an adapter to apply.
REFUSED: dict[str, str] = {}


def check_supported(config) -> None:
    """Refuse a config no adapter handles, before any weight is loaded, saying what is missing."""
    model_type = getattr(config, "model_type", None)
    if model_type in REFUSED:
        raise UnsupportedModelError(f"model_type {model_type!r}: {REFUSED[model_type]}")
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"No prunelab adapter for model_type {model_type!r}."
            f"{did_you_mean(str(model_type), ADAPTERS.names())} "
            f"Supported: {', '.join(ADAPTERS.names())}. To add one, subclass ModelAdapter and "
            "LayerAdapter in prunelab/models/adapters/ and register it with @ADAPTERS.register."
        )
    ADAPTERS.get(model_type).check_config(config)


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``, chosen by its config's ``model_type``."""
    check_supported(model.config)
    return ADAPTERS.get(model.config.model_type)(model)
