"""Secure aggregation (Bonawitz et al. 2017) for federated rounds; the public API is fastlm.federated.secure_agg."""
