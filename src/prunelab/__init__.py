"""prunelab: structured pruning of large language models, swept with Hydra.

Importing prunelab registers the pruned-model architecture (``model_type: prunelab_llama``)
with transformers' Auto classes, so saved pruned models load with plain ``from_pretrained``.
"""

from prunelab.models import pruned as _pruned  # noqa: F401  (Auto-class registration)

__version__ = "0.1.0"
