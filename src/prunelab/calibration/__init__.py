"""Layer-by-layer calibration: block inputs, per-channel statistics, on-disk cache."""
