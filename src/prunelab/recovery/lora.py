"""LoRA adapters through PEFT, attached to a pruned model and merged back into it.

Merging folds ``B @ A * alpha / r`` into each adapted projection's weight, so the model that
leaves recovery has no adapter and the exact shapes (and parameter count) pruning left.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from prunelab.config.schema import LoraSpec
from prunelab.errors import PrunelabError


def attach_lora(model: nn.Module, spec: LoraSpec) -> PeftModel:
    """``model`` wrapped with trainable LoRA adapters on ``spec.targets`` (the rest frozen)."""
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
               if isinstance(module, nn.Linear)}
    missing = sorted(set(spec.targets) - present)
    if missing:
        raise PrunelabError(f"recovery.lora.targets {missing} are not linear layers of this "
                            f"model; it has {sorted(present)}.")
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.targets), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def merge_lora(peft_model: PeftModel) -> nn.Module:
    """The base model with the adapters folded into its weights.

    Parameters stay frozen where :func:`attach_lora` froze them: the caller decides what is
    trainable next.
    """
    return peft_model.merge_and_unload()
