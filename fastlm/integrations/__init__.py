"""Patches and registrations that make other frameworks run on fastlm's kernels (Hugging Face, ...)."""
