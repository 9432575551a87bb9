"""mpcore's compute kernels. Each public function dispatches between implementations.

``MPCORE_KERNELS=torch`` forces the pure-torch references (the only implementation so far;
the Triton versions are a separate piece of work and plug in behind the same functions).
"""

from mpcore_kernels.flow_tv import flow_tv_loss, flow_tv_loss_reference

__all__ = ["flow_tv_loss", "flow_tv_loss_reference"]
