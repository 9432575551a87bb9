"""Session-wide test setup: without a GPU, Triton kernels run in Triton's interpreter; the stand-in flow
estimator and discriminator every guidance test of the core and the plugins uses.

TRITON_INTERPRET is read when a ``@triton.jit`` function is defined, i.e. when mpcore_kernels is
first imported, so it is set here, before any test module imports it. Kernel dispatch still picks
the torch reference for CPU tensors unless MPCORE_KERNELS=triton forces Triton.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def flow_estimator():
    """A differentiable stand-in flow (:class:`mpcore.testing.DifferenceFlow`)."""
    from mpcore.testing import DifferenceFlow

    return DifferenceFlow()


@pytest.fixture
def discriminator():
    """A fixed random linear discriminator (:class:`mpcore.testing.LinearDiscriminator`)."""
    from mpcore.testing import LinearDiscriminator

    return LinearDiscriminator()
