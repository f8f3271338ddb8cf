"""Triton kernels of fastlm, installed as `fastlm.kernels` (CUDA tensors; TRITON_INTERPRET=1 in tests).

Modules here only launch kernels; fastlm.ops decides when to call them.
"""
