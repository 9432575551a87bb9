"""mp-plugin-vbench: VBench's temporal-quality metrics for ``mpcore eval``.

Definitions follow VBench (Huang et al., "VBench: Comprehensive Benchmark Suite for Video Generative
Models", CVPR 2024); see :mod:`mp_plugin_vbench.metrics` for each one. VBench's motion smoothness
needs the AMT interpolation network, which this plugin does not ship: it registers a documented
substitute under its own id, ``motion_smoothness_flowinterp`` (``vbench=False``), never under
VBench's name.

Registered under the ``mpcore`` entry-point group as ``vbench`` (see ``pyproject.toml``).
"""

from __future__ import annotations

from mpcore.hookspecs import hookimpl
from mpcore.interfaces import MetricSpec

from mp_plugin_vbench import metrics

__version__ = "0.1.0"

METRICS = [
    MetricSpec(
        name="temporal_flickering",
        load=metrics.load_temporal_flickering,
        vbench=True,
        description="VBench temporal flickering: (255 - mean absolute difference of consecutive frames) / 255. "
        "No weights.",
    ),
    MetricSpec(
        name="subject_consistency",
        load=metrics.load_subject_consistency,
        vbench=True,
        description="VBench subject consistency: DINO ViT-B/16 (timm vit_base_patch16_224.dino) features; per frame "
        "the mean of the cosine similarity to the previous and to the first frame. weights: local state dict "
        "(default: hub). options: arch.",
    ),
    MetricSpec(
        name="background_consistency",
        load=metrics.load_background_consistency,
        vbench=True,
        description="VBench background consistency: CLIP ViT-B/32 (open_clip, OpenAI weights) image features; "
        "combined as subject consistency. weights: local open_clip checkpoint (default: 'openai', download). "
        "options: arch, quick_gelu.",
    ),
    MetricSpec(
        name="dynamic_degree",
        load=metrics.load_dynamic_degree,
        vbench=True,
        description="VBench dynamic degree: 1.0 if enough RAFT-large flows of consecutive frames (sampled to ~8 fps) "
        "have a top-5% magnitude above 6 * min(H, W) / 256, else 0.0. weights: raft-things.pth "
        "(default: torchvision C_T_V1, download).",
    ),
    MetricSpec(
        name="motion_smoothness_flowinterp",
        load=metrics.load_motion_smoothness_flowinterp,
        vbench=False,
        description="SUBSTITUTE for VBench motion smoothness (which uses the AMT interpolation network): odd "
        "frames re-created from their even neighbours by TV-L1-flow interpolation, scored (255 - MAE) / 255 "
        "as VBench. Not comparable with VBench's numbers. No weights.",
    ),
]


@hookimpl
def register_metrics(register):
    for spec in METRICS:
        register(spec)
