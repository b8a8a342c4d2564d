"""Contracts between prunelab and a model family.

A :class:`ModelAdapter` exposes the decoder blocks, embeddings, final norm and head; a
:class:`LayerAdapter` exposes one block's projections, norms and the two hook points every
method reads (the inputs of ``o_proj`` and ``down_proj``, METHODS.md's ``A`` and ``a``).
Head geometry is read from the weights, not from the config, so an adapter describes pruned
blocks (fewer heads, narrower MLP) as truthfully as dense ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

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


def _row_parameters(linear: nn.Linear) -> int:
    return linear.in_features + (1 if linear.bias is not None else 0)


class ModelAdapter(ABC):
    """A whole causal LM of one family."""

    layer_adapter_cls: type[LayerAdapter]

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


ADAPTERS: Registry[ModelAdapter] = Registry(
    "model architecture", "model_type of a Hugging Face config -> ModelAdapter subclass",
    base_cls=ModelAdapter)


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``, chosen by its config's ``model_type``."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"No prunelab adapter for model_type {model_type!r}."
            f"{did_you_mean(str(model_type), ADAPTERS.names())} "
            f"Supported: {', '.join(ADAPTERS.names())}. To add one, subclass ModelAdapter and "
            "LayerAdapter in prunelab/models/adapters/ and register it with @ADAPTERS.register."
        )
    return ADAPTERS.get(model_type)(model)
