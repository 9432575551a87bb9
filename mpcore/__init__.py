"""mpcore: MotionPrompt guidance for video diffusion models (learnable prompt tokens optimized
against an optical-flow discriminator during DDIM sampling).

The Python API is the one ``mpcore run`` is built on::

    import mpcore

    backbone = mpcore.load_backbone("animatediff", model="tiny")          # or mpcore.wrap_pipeline(pipe)
    guidance = mpcore.build_guidance("motionprompt", backbone, discriminator="random")
    result = mpcore.generate(backbone, "a fox runs", guidance=guidance, seed=0, steps=4, compare=True)
    result.video            # uint8 (F, H, W, 3); result.baseline the unguided video of the same seed
    result.save("fox.mp4")  # fox.mp4, fox_compare.mp4, fox_trace.png, fox.json: what `mpcore run` writes

Names are imported on first use, so ``import mpcore`` stays light (no torch until a function runs).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mpcore.hookspecs import hookimpl

__version__ = "0.1.0"

_API = {  # public name -> the module that defines it
    "load_backbone": "mpcore.jobs.load",
    "wrap_pipeline": "mpcore.jobs.load",
    "build_guidance": "mpcore.jobs.guidance",
    "generate": "mpcore.jobs.execute",
    "Generation": "mpcore.jobs.execute",
    "Guidance": "mpcore.jobs.guidance",
    "SamplingError": "mpcore.jobs.execute",
    "GuidanceSkippedError": "mpcore.jobs.execute",
    "OptionError": "mpcore.jobs.options",
    "ConfigError": "mpcore.config",
    "SamplerConfig": "mpcore.config",
    "MotionPromptConfig": "mpcore.config",
    "FreeInitConfig": "mpcore.config",
    "UnknownPluginError": "mpcore.plugins",
    "train_discriminator_recipe": "mpcore.jobs.recipe",
    "RecipeSettings": "mpcore.jobs.recipe",
}

__all__ = ["hookimpl", "__version__", *_API]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from mpcore.config import ConfigError, FreeInitConfig, MotionPromptConfig, SamplerConfig
    from mpcore.jobs.execute import Generation, GuidanceSkippedError, SamplingError, generate
    from mpcore.jobs.guidance import Guidance, build_guidance
    from mpcore.jobs.load import load_backbone, wrap_pipeline
    from mpcore.jobs.options import OptionError
    from mpcore.jobs.recipe import RecipeSettings, train_discriminator_recipe
    from mpcore.plugins import UnknownPluginError


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'mpcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
