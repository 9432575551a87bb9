"""mpcore plugin: FlowMo as a guidance (``mpcore run --guidance flowmo``)."""

from __future__ import annotations

from mpcore.config import ConfigError
from mpcore.hookspecs import hookimpl
from mpcore.interfaces import GuidanceSpec, latent_frames

from mp_plugin_flowmo.flowmo import FlowMo, FlowMoConfig, backbone_defaults, flowmo_loss, latent_update_health

__all__ = ["FlowMo", "FlowMoConfig", "backbone_defaults", "flowmo_loss", "latent_update_health",
           "register_guidances"]


def check(config: FlowMoConfig, sampler, backbone_spec) -> None:
    """Before any model loads: the settings, an explicit step range inside the run's steps (not clipped
    silently), and the 3 latent frames FlowMo's loss needs (2 frame differences)."""
    config.validate()
    if config.opt_range is not None and config.opt_range[1] > sampler.steps:
        raise ConfigError(f"invalid config: opt_range={list(config.opt_range)}; allowed: start,stop with stop <= "
                          f"{sampler.steps} (the sampling steps)", field="opt_range")
    frames = latent_frames(sampler.frames, backbone_spec.temporal_compression)
    if frames < 3:
        raise ConfigError(f"FlowMo needs at least 3 latent frames (2 frame differences); {sampler.frames} frames give "
                          f"{frames}: sample more --frames")


def build(config: FlowMoConfig, context=None) -> FlowMo:
    """A fresh FlowMo for one video (its trace starts empty); it needs nothing of the context."""
    return FlowMo(config)


@hookimpl
def register_guidances(register):
    register(GuidanceSpec(
        name="flowmo",
        build=build,
        description="FlowMo (Shaulov et al. 2025) as its authors' Wan code runs it: one Adam step on x_t in the first "
                    "12 of 50 steps lowering the largest temporal variance of the velocity's frame differences; no "
                    "flow estimator, no discriminator",
        config_class=FlowMoConfig,
        defaults_for=backbone_defaults,
        check=check,
        trace_plot=True,  # <video>_trace.png: its loss per guided step and how far each update moved x_t
        health=latent_update_health,  # "FlowMo: N latent updates, K skipped"; the manifest's guidance_updates
    ))
