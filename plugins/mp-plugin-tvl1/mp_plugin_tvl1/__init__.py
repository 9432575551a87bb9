"""mp-plugin-tvl1: a weight-free, differentiable optical-flow estimator for mpcore.

MotionPrompt needs the flow between decoded frames to be differentiable w.r.t. the frames. RAFT,
the paper's choice, needs downloaded weights; this estimator needs none: coarse-to-fine TV-L1
(Zach et al. 2007; Wedel et al. 2009; Sánchez et al., IPOL 2013) with a fixed number of unrolled
primal-dual iterations, so it works on air-gapped machines and in every offline test.

Registered under the ``mpcore`` entry-point group as ``tvl1`` (see ``pyproject.toml``).
"""

from __future__ import annotations

from mpcore.hookspecs import hookimpl
from mpcore.interfaces import FlowEstimatorSpec

from mp_plugin_tvl1.flow import TVL1Config, TVL1Flow, load, tvl1_flow

__version__ = "0.1.0"

__all__ = ["TVL1Config", "TVL1Flow", "load", "tvl1_flow", "register_flow_estimators", "__version__"]

DESCRIPTION = (
    "TV-L1 optical flow with no weights (coarse-to-fine, unrolled primal-dual iterations; "
    "differentiable, deterministic). options: iterations=20, warps=10, data_weight=0.3, "
    "max_scales=6, median_size=5, checkpointing=True."
)


@hookimpl
def register_flow_estimators(register):
    register(FlowEstimatorSpec(name="tvl1", load=load, description=DESCRIPTION))
