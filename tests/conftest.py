"""Test-session setup.

Without CUDA, Triton kernels can only run through Triton's CPU interpreter, and ``triton.jit``
picks interpreter or compiler when a kernel is *defined*; so this is set before any test module
imports a kernel. On a GPU machine it stays unset and the same kernel tests compile for real.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
