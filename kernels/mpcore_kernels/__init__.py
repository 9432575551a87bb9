"""mpcore's compute kernels. Each public function dispatches between implementations.

Every kernel (``flow_tv_loss``, ``subset_tweedie``) has a Triton implementation and a pure-torch
reference (``*_reference``), chosen per call by ``MPCORE_KERNELS`` (see ``mpcore_kernels._dispatch``):
Triton on CUDA tensors by default, ``MPCORE_KERNELS=torch`` forces the references, and
``MPCORE_KERNELS=triton`` forces Triton (on CPU only under ``TRITON_INTERPRET=1``).
"""

from mpcore_kernels.flow_tv import flow_tv_loss, flow_tv_loss_reference
from mpcore_kernels.subset_tweedie import subset_tweedie, subset_tweedie_reference

__all__ = ["flow_tv_loss", "flow_tv_loss_reference", "subset_tweedie", "subset_tweedie_reference"]
