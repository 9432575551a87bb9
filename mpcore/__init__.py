"""mpcore: MotionPrompt guidance for video diffusion models (learnable prompt tokens optimized
against an optical-flow discriminator during DDIM sampling)."""

from mpcore.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["hookimpl", "__version__"]
