"""Whether the Hugging Face hub may be tried, decided once and quickly.

Offline machines would otherwise wait through minutes of client retries before failing.
"""

from __future__ import annotations

import functools
import os
import socket

_HUB_HOST = "huggingface.co"


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 2.0) -> bool:
    """True unless HF offline mode is set or the hub host cannot be connected to."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").lower() in ("1", "true", "yes", "on"):
            return False
    try:
        with socket.create_connection((_HUB_HOST, 443), timeout=timeout_s):
            return True
    except OSError:
        return False
