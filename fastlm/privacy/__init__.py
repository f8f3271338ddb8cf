"""Private training: DP-SGD (per-sample clipping without per-sample gradients, noise, accounting)."""
