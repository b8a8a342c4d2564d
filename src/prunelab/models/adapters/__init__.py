"""Architecture adapters: the only code that knows a model family's attribute names."""

from prunelab.models.adapters import (  # noqa: F401  (registration)
    gemma3,  # gemma3_text, prunelab_gemma3; refuses the multimodal gemma3
    llama,  # llama, mistral, qwen2, prunelab_llama
)
from prunelab.models.adapters.base import (
    ADAPTERS,
    LayerAdapter,
    LayerGeometry,
    ModelAdapter,
    PrunedLayerAdapter,
    adapter_for,
    check_supported,
)

__all__ = ["ADAPTERS", "LayerAdapter", "LayerGeometry", "ModelAdapter", "PrunedLayerAdapter",
           "adapter_for", "check_supported"]
