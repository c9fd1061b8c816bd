"""Proposal scoring, mask NMS and friends: NumPy references (and, as they land, the
Numba CPU and CUDA kernels tested against them). Imports nothing else of icn_rt."""
