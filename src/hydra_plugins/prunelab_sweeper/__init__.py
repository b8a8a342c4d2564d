"""prunelab's Hydra sweeper (Hydra finds plugins only inside the ``hydra_plugins`` package)."""
