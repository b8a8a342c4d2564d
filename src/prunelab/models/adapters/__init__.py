"""Architecture adapters: the only code that knows a model family's attribute names."""

from prunelab.models.adapters import llama  # noqa: F401  (registers llama, mistral, qwen2, prunelab_llama)
from prunelab.models.adapters.base import (
    ADAPTERS,
    LayerAdapter,
    LayerGeometry,
    ModelAdapter,
    adapter_for,
)

__all__ = ["ADAPTERS", "LayerAdapter", "LayerGeometry", "ModelAdapter", "adapter_for"]
