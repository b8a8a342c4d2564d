"""Evaluation: perplexity (and later zero-shot accuracy and speed)."""
