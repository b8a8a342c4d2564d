"""Config of a structurally pruned Gemma-3 text model (self-contained: torch + transformers).

Copied, with ``configuration_prunelab.py`` whose helper it uses, next to every saved pruned
Gemma-3 model so plain transformers loads it with ``trust_remote_code=True``. The per-layer
geometry is ``PrunelabConfig``'s (``layer_kv_map``, ``layer_intermediate_sizes``,
``attention_compensation``, ``mlp_compensation``); everything else is the source model's
``Gemma3TextConfig`` (sliding-window pattern, rope bases, norms, embedding scale).
"""

from __future__ import annotations

from transformers import Gemma3TextConfig

from .configuration_prunelab import fill_layer_geometry


class PrunelabGemma3Config(Gemma3TextConfig):
    """A Gemma3TextConfig plus the per-layer geometry of a pruned model."""

    model_type = "prunelab_gemma3"

    layer_kv_map: list | None = None
    layer_intermediate_sizes: list | None = None
    attention_compensation: list | None = None
    mlp_compensation: list | None = None
    source_model_type: str | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        fill_layer_geometry(self)

    @property
    def kv_sharing_modes(self) -> list[str | None] | None:
        """Per layer, ``"reuse"`` where the attention was removed: no KV cache of its own.

        transformers builds a cache layer per decoder layer from ``layer_types`` and gives a
        placeholder (no storage, skipped when the cache's length and masks are read) to a
        layer whose mode is ``"reuse"``; a block without attention needs exactly that. It
        reads the length from some attention layer, so a model with no attention left keeps
        ordinary cache layers, which stay empty (positions and masks then go unused).
        """
        if not any(self.layer_kv_map):
            return None
        return [None if kv_map else "reuse" for kv_map in self.layer_kv_map]


__all__ = ["PrunelabGemma3Config"]
