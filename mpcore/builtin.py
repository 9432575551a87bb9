"""mpcore's built-in plugin: it registers MotionPrompt as a guidance through the same hook third-party
guidance plugins use (:func:`mpcore.hookspecs.register_guidances`)."""

from __future__ import annotations

from mpcore.config import MotionPromptConfig
from mpcore.hookspecs import hookimpl
from mpcore.interfaces import GuidanceSpec


def build_motionprompt(config: MotionPromptConfig, flow_estimator, discriminator, decoder=None):
    """A fresh :class:`mpcore.motionprompt.MotionPrompt` (its token starts from the init word)."""
    from mpcore.motionprompt import MotionPrompt

    return MotionPrompt(config, flow_estimator, discriminator, decoder)


@hookimpl
def register_guidances(register):
    register(GuidanceSpec(
        name="motionprompt",
        build=build_motionprompt,
        description="MotionPrompt (Nam et al. 2025): a learnable prompt token optimized against a flow discriminator",
        config_class=MotionPromptConfig,
        needs_models=True,
    ))
