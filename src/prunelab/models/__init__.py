"""Model loading, architecture adapters and (later) surgery."""
