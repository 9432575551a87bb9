"""mp-plugin-raft: the RAFT optical-flow estimator for mpcore.

MotionPrompt judges the optical flow between pairs of decoded frames with a discriminator; the flow
must be differentiable w.r.t. the frames so the discriminator's gradient reaches the prompt token.
This plugin provides that flow with RAFT (Teed & Deng, "RAFT: Recurrent All-Pairs Field Transforms
for Optical Flow", ECCV 2020) as implemented by ``torchvision.models.optical_flow``.

Registered under the ``mpcore`` entry-point group as ``raft`` (see ``pyproject.toml``).
"""

from __future__ import annotations

from mpcore.hookspecs import hookimpl
from mpcore.interfaces import FlowEstimatorSpec

from mp_plugin_raft.flow import RAFTFlow, load, pad_amounts

__version__ = "0.1.0"

__all__ = ["RAFTFlow", "load", "pad_amounts", "register_flow_estimators", "__version__"]

DESCRIPTION = (
    "RAFT optical flow (Teed & Deng 2020, torchvision). weights: a torchvision enum name "
    "(None = DEFAULT; downloads), a local .pth/.pt/.safetensors file holding a torchvision RAFT state dict "
    "or an original princeton-vl RAFT checkpoint (raft-things.pth, raft-sintel.pth, raft-kitti.pth, "
    "raft-chairs.pth, raft-small.pth; format detected from the keys, strict load), or 'random' (seeded "
    "random init, offline smoke runs). options: size=small|large (default: inferred from a weights file, "
    "else small), num_flow_updates=12."
)


@hookimpl
def register_flow_estimators(register):
    register(FlowEstimatorSpec(name="raft", load=load, description=DESCRIPTION, options=("size", "num_flow_updates")))
