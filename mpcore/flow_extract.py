"""Deprecated path of :mod:`mpcore.flows.extract` (moved in 0.2; this one works for one release)."""

import warnings

from mpcore.flows import extract as _moved


def __getattr__(name: str):
    warnings.warn("mpcore.flow_extract moved to mpcore.flows.extract; import it from there (the old path goes in the "
                  "next release)", DeprecationWarning, stacklevel=2)
    return getattr(_moved, name)
