"""Session-wide test setup: without a GPU, Triton kernels run in Triton's interpreter.

TRITON_INTERPRET is read when a ``@triton.jit`` function is defined, i.e. when mpcore_kernels is
first imported, so it is set here, before any test module imports it. Kernel dispatch still picks
the torch reference for CPU tensors unless MPCORE_KERNELS=triton forces Triton.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
