"""mp-plugin-vit: the ViT optical-flow discriminator of MotionPrompt for mpcore.

MotionPrompt (Nam et al., CVPR 2025) guides video diffusion with a discriminator that judges the
optical flow between decoded frames; this plugin provides it as a timm ViT with a 2 -> 3 channel
projection in front and a 3-layer MLP head (see :mod:`mp_plugin_vit.discriminator`).

Registered under the ``mpcore`` entry-point group as ``vit`` (see ``pyproject.toml``).
"""

from __future__ import annotations

from mpcore.hookspecs import hookimpl
from mpcore.interfaces import DiscriminatorSpec

from mp_plugin_vit.discriminator import (
    PRESETS,
    DiscriminatorConfigError,
    PretrainedWeightsError,
    ViTDiscriminator,
    ViTDiscriminatorConfig,
    build,
    build_discriminator,
    config_from_options,
    freeze,
    load,
    prepare_flow,
    random,
    read_config,
    resize_flow,
    save,
    tiny_config,
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "DiscriminatorConfigError",
    "PretrainedWeightsError",
    "ViTDiscriminator",
    "ViTDiscriminatorConfig",
    "build",
    "build_discriminator",
    "config_from_options",
    "freeze",
    "load",
    "prepare_flow",
    "random",
    "read_config",
    "register_discriminators",
    "resize_flow",
    "save",
    "tiny_config",
    "__version__",
]

DESCRIPTION = (
    "ViT flow discriminator (MotionPrompt): timm ViT on 2-channel flow via a 1x1 conv projection, "
    "3-layer MLP head. Files: NAME.safetensors + NAME.json; 'random' = tiny random-init (smoke runs); "
    "trainable with `mpcore disc train --type vit --arch preset=paper|small|cpu|tiny`."
)


@hookimpl
def register_discriminators(register):
    register(DiscriminatorSpec(name="vit", load=load, random=random, build=build, save=save, description=DESCRIPTION))
