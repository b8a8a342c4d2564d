"""prunelab: structured pruning of large language models, swept with Hydra."""

__version__ = "0.1.0"
