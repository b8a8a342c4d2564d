"""OmegaConf resolvers the configs use, registered when prunelab is imported.

``${launch_dir:}`` is the folder the job was launched from. Hydra's own
``${hydra:runtime.cwd}`` is not available while a sweeper computes ``hydra.sweep.dir``, so the
roots of every path use this one.
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def register_resolvers() -> None:
    """Register prunelab's resolvers once (idempotent)."""
    if not OmegaConf.has_resolver("launch_dir"):
        OmegaConf.register_new_resolver("launch_dir", os.getcwd)
