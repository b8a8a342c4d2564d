"""Architecture adapters: the only code that knows a model family's attribute names."""

from prunelab.models.adapters.base import (
    ADAPTERS,
    LayerAdapter,
    LayerGeometry,
    ModelAdapter,
    adapter_for,
)
from prunelab.models.adapters import llama  # noqa: F401  (registers llama, mistral, qwen2, prunelab_llama)

__all__ = ["ADAPTERS", "LayerAdapter", "LayerGeometry", "ModelAdapter", "adapter_for"]
