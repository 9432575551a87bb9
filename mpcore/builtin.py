"""mpcore's built-in plugin: it registers MotionPrompt as a guidance through the same hook third-party
guidance plugins use (:func:`mpcore.hookspecs.register_guidances`). Everything the run does for
MotionPrompt in particular comes from what is declared here."""

from __future__ import annotations

from typing import Any

from mpcore.config import PAPER_STEPS, ConfigError, MotionPromptConfig, SamplerConfig, to_dict
from mpcore.hookspecs import hookimpl
from mpcore.interfaces import BackboneSpec, GuidanceContext, GuidanceSpec, latent_frames


DEFAULT_GUIDANCE = "motionprompt"
"""What ``--guidance`` (and :func:`mpcore.build_guidance`'s name) defaults to."""


def build_motionprompt(config: MotionPromptConfig, context: GuidanceContext):
    """A fresh :class:`mpcore.motionprompt.MotionPrompt` (its token starts from the init word)."""
    from mpcore.motionprompt import MotionPrompt

    return MotionPrompt(config, context.flow_estimator, context.discriminator, context.decoder)


def motionprompt_defaults(backbone_spec: BackboneSpec, model: str | None) -> dict[str, Any]:
    """The paper's settings for the backbone (its spec's ``motionprompt_defaults``, the table of docs/guidances.md)."""
    return backbone_spec.defaults_for(model)[1]


def check_motionprompt(config: MotionPromptConfig, sampler: SamplerConfig, backbone_spec: BackboneSpec) -> None:
    """The settings against the sampler's: step range, decoded frames (of the latent frames with a causal VAE)."""
    compressed = backbone_spec.temporal_compression > 1
    config.validate(sampler, latent_frames(sampler.frames, backbone_spec.temporal_compression) if compressed else None)
    context = backbone_spec.text_context_length
    if context is not None and config.num_tokens > context - 3:  # BOS/EOS and at least one prompt token
        raise ConfigError(f"invalid config: num_tokens={config.num_tokens}; the {backbone_spec.name} text encoder reads "
                          f"{context} tokens, special tokens and the prompt included: at most {context - 3} learnable "
                          "tokens, fewer with a longer prompt", field="num_tokens")


def resolve_motionprompt(config: MotionPromptConfig, sampler: SamplerConfig) -> dict[str, Any]:
    """The settings with the step range the run uses and where it comes from."""
    return {**to_dict(config), "opt_range": list(config.resolved_opt_range(sampler.steps)),
            "opt_range_source": "explicit" if config.opt_range is not None else
            f"reference range {list(config.reference_opt_range)} at {PAPER_STEPS} steps, scaled to {sampler.steps}"}


def token_update_health(result: dict[str, Any]) -> dict[str, Any]:
    """How many token updates MotionPrompt attempted in its range, how many it skipped and why, from
    its result (``skipped_updates`` and the per-iteration ``skipped``/``skip_reason`` of the trace)."""
    from mpcore.sampling import count_trace_updates

    return count_trace_updates(result, "MotionPrompt", "token updates", "Lower the learning rate (-o lr=...) or the "
                               "loss weights (-o l_disc/l_tv/l_reg=...) and run again.", result.get("skipped_updates"))


@hookimpl
def register_guidances(register):
    register(GuidanceSpec(
        name=DEFAULT_GUIDANCE,
        build=build_motionprompt,
        description="MotionPrompt (Nam et al. 2025): a learnable prompt token optimized against a flow discriminator",
        config_class=MotionPromptConfig,
        defaults_for=motionprompt_defaults,
        needs=("flow", "discriminator"),
        check=check_motionprompt,
        resolve=resolve_motionprompt,
        section="motionprompt",
        trace_plot=True,
        gate="disc",
        health=token_update_health,
    ))
