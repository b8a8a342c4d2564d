"""Recovery: training a pruned model after the pruning stage (METHODS.md "Recovery").

A stage of the pipeline after pruning, not part of a method: LoRA (``recovery=lora``) or
distillation from the dense model (``recovery=distill``), both merged back into the weights,
so the plan, the parameter count and the saved model's format are exactly those pruning left.
:func:`prunelab.recovery.trainer.recover` runs it; the modules below hold one step each
(data order, losses, adapters, checkpoints).
"""
