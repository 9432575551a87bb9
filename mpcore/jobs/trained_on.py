"""What a discriminator was trained on (its ``trained_on``: flow estimator, frame size), read and checked
against a run's flows before any model loads (:class:`mpcore.interfaces.Discriminator`)."""

from __future__ import annotations

from typing import Any

from mpcore.config import ConfigError, SamplerConfig


def read_trained_on(value: Any, source: str) -> dict[str, Any] | None:
    """A discriminator's ``trained_on`` (:class:`mpcore.interfaces.Discriminator`), checked:
    None, or a dict whose ``flow_estimator`` is a name or None and ``frame_size`` [H, W] or None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: trained_on = {value!r}; expected an object (flow_estimator, frame_size) or null")
    estimator, size = value.get("flow_estimator"), value.get("frame_size")
    if estimator is not None and not (isinstance(estimator, str) and estimator):
        raise ConfigError(f"{source}: trained_on.flow_estimator = {estimator!r}; expected a flow estimator name or null")
    if size is not None and not (isinstance(size, list) and len(size) == 2
                                 and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in size)):
        raise ConfigError(f"{source}: trained_on.frame_size = {size!r}; expected [H, W] (positive integers) or null")
    return dict(value)


def check_trained_on(trained_on: dict[str, Any] | None, config: Any, sampler: SamplerConfig,
                     source: str | None) -> tuple[str, list[str]]:
    """Check a run's flows against what its discriminator (``source``) was trained on; return where
    ``config.flow_size`` comes from and the warnings. Changes ``config.flow_size`` in place.

    * another flow estimator than the discriminator's is a :class:`ConfigError`: a discriminator
      judges only flows of the estimator it was trained on;
    * with no ``flow_size`` set (-o flow_size) and a square training frame size S other than the
      decoded frame size, flows are computed at S x S (``flow_size = S``), as in training;
    * a non-square training frame size other than the decoded size, or an explicit ``flow_size``
      other than a square training size, is a warning (flows are computed at a size D never saw).
    """
    explicit = config.flow_size is not None
    if not trained_on:
        return ("explicit" if explicit else "decoded frame size"), []
    estimator, size = trained_on.get("flow_estimator"), trained_on.get("frame_size")
    if estimator is not None and estimator != config.flow_estimator:
        raise ConfigError(
            f"the discriminator {source} was trained on flows of the {estimator!r} estimator (its trained_on), but "
            f"this run computes flows with {config.flow_estimator!r}: a discriminator judges only flows of the "
            f"estimator it was trained on. Pass --flow {estimator}, or train a discriminator on {config.flow_estimator} "
            f"flows (`mpcore flows extract --estimator {config.flow_estimator}`, then `mpcore disc train`)."
        )
    decoded = [sampler.height, sampler.width]
    square = size is not None and size[0] == size[1]
    if explicit:
        if square and config.flow_size != size[0]:
            return "explicit", [f"flows are computed at -o flow_size={config.flow_size}, but the discriminator {source} "
                                f"was trained on flows of {size[0]}x{size[1]} frames"]
        return "explicit", []
    if size is None or size == decoded:
        return "decoded frame size", []
    if square:
        config.flow_size = size[0]
        return "discriminator trained_on", []
    return "decoded frame size", [
        f"the discriminator {source} was trained on flows of {size[0]}x{size[1]} (HxW) frames, but the decoded frames are "
        f"{decoded[0]}x{decoded[1]}: flows are computed at the decoded size (-o flow_size resizes only to a square)"]
