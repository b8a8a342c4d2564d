"""results.json, W&B and printed summaries."""
