"""prunelab: structured pruning of large language models, swept with Hydra.

Importing prunelab registers the pruned-model architectures (``model_type: prunelab_llama``,
``prunelab_gemma3``) with transformers' Auto classes, so saved pruned models load with plain
``from_pretrained``, and the OmegaConf resolvers the configs use.
"""

from prunelab.config.resolvers import register_resolvers
from prunelab.models import pruned as _pruned  # noqa: F401  (Auto-class registration)

register_resolvers()

__version__ = "0.1.0"
