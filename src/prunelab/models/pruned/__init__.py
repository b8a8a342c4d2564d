"""The pruned-model architecture, registered with transformers' Auto classes on import."""

from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM

from prunelab.models.pruned.configuration_prunelab import PrunelabConfig
from prunelab.models.pruned.modeling_prunelab import PrunelabForCausalLM

#: Files copied next to saved pruned models so plain transformers can load them.
REMOTE_CODE_FILES = [Path(__file__).parent / "configuration_prunelab.py",
                     Path(__file__).parent / "modeling_prunelab.py"]
AUTO_MAP = {"AutoConfig": "configuration_prunelab.PrunelabConfig",
            "AutoModelForCausalLM": "modeling_prunelab.PrunelabForCausalLM"}

AutoConfig.register(PrunelabConfig.model_type, PrunelabConfig, exist_ok=True)
AutoModelForCausalLM.register(PrunelabConfig, PrunelabForCausalLM, exist_ok=True)

__all__ = ["AUTO_MAP", "REMOTE_CODE_FILES", "PrunelabConfig", "PrunelabForCausalLM"]
