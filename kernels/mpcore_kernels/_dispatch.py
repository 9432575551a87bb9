"""Choosing between a kernel's Triton implementation and its pure-torch reference.

``MPCORE_KERNELS`` in the environment:

- unset or ``auto``: Triton when it is importable and every tensor is on CUDA, else the reference;
- ``torch``: always the reference;
- ``triton``: always Triton (on CPU tensors only under ``TRITON_INTERPRET=1``, Triton's interpreter,
  which is how the kernels are tested without a GPU).
"""

from __future__ import annotations

import functools
import os

import torch

ENV = "MPCORE_KERNELS"
MODES = ("auto", "torch", "triton")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # not installed, or no usable backend on this platform
        return False
    return True


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether the Triton implementation should run for these input tensors."""
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV}={mode!r}; allowed: {', '.join(MODES)}")
    if mode == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if mode == "triton":
        if not triton_available():
            raise RuntimeError(f"{ENV}=triton but Triton is not importable here (pip install triton)")
        if not on_cuda and not interpreter_enabled():
            raise RuntimeError(f"{ENV}=triton on CPU tensors needs TRITON_INTERPRET=1 (Triton's interpreter)")
        return True
    return on_cuda and triton_available()


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 accumulation for fp16/bf16/fp32 inputs; float64 stays float64 (for gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
