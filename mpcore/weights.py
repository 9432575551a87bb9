"""Deprecated path of :mod:`mpcore.io.weights` (moved in 0.2; this one works for one release)."""

import warnings

from mpcore.io import weights as _moved


def __getattr__(name: str):
    warnings.warn("mpcore.weights moved to mpcore.io.weights; import it from there (the old path goes in the next "
                  "release)", DeprecationWarning, stacklevel=2)
    return getattr(_moved, name)
