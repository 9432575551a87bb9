"""AnimateDiff backbone plugin for mpcore (registered through the ``mpcore`` entry-point group)."""

from __future__ import annotations

import click

from mpcore import OptionError, hookimpl
from mpcore.backbones import defaults_by_model, lazy_load, sd_tiny_decoder
from mpcore.interfaces import BackboneSpec

__version__ = "0.1.0"

# The MotionPrompt paper's AnimateDiff settings: 1 token, K=3 updates per step, 3 < i < 15 of 50 DDIM
# steps (stored as the half-open [4, 15), scaled to other step counts), 2 decoded frames, l_disc 1,
# l_tv 5, l_reg 10, lr 5e-3.
PAPER_MOTIONPROMPT_DEFAULTS = dict(
    num_tokens=1, iterations=3, reference_opt_range=(4, 15), decoded_frames=2,
    l_disc=1.0, l_tv=5.0, l_reg=10.0, lr=0.005,
)

# the paper samples with 50 DDIM steps; AnimateDiff's resolution and clip length
sampler_defaults = defaults_by_model(dict(frames=16, height=512, width=512, steps=50, cfg_scale=7.5),
                                     tiny="mp_plugin_animatediff.tiny:TINY_SAMPLER_DEFAULTS",
                                     toy="mp_plugin_animatediff.toy:TOY_SAMPLER_DEFAULTS")
motionprompt_defaults = defaults_by_model(PAPER_MOTIONPROMPT_DEFAULTS,
                                          toy="mp_plugin_animatediff.toy:TOY_MOTIONPROMPT_DEFAULTS")
load = lazy_load("mp_plugin_animatediff.backbone")


def wrap(pipeline, **options):
    """``BackboneSpec.wrap``: :func:`mp_plugin_animatediff.backbone.wrap` (what it changes on the pipeline,
    which scheduler it samples with), imported on first use."""
    from mp_plugin_animatediff.backbone import wrap as wrap_pipeline

    return wrap_pipeline(pipeline, **options)


def default_discriminator(model: str | None) -> str | None:
    """The toy model ships with its own trained discriminator."""
    from mp_plugin_animatediff.toy import TOY_MODEL, toy_paths

    return str(toy_paths()["discriminator"]) if model == TOY_MODEL else None


def default_guidance_decoder(model: str | None) -> str | None:
    """``-o guidance_decoder=tiny``: the toy model ships a tiny decoder distilled from its own VAE
    (scripts/distill_tiny_decoder.py); SD-1.5 models use TAESD; the random tiny model has none."""
    from mp_plugin_animatediff.toy import TOY_MODEL, toy_paths

    return str(toy_paths()["tiny_decoder"]) if model == TOY_MODEL else sd_tiny_decoder(model)


def check(model: str | None, motion_adapter: str | None = None, base_config: str | None = None, **_) -> None:
    """Cheap checks before any weights load: local paths that do not exist."""
    from mp_plugin_animatediff import loading
    from mp_plugin_animatediff.toy import TOY_MODEL, check_installed

    given = "--motion-adapter" if motion_adapter else "--base-config"  # the option a toy/tiny model refuses
    if model == TOY_MODEL:
        if motion_adapter or base_config:
            raise OptionError(f"--model {TOY_MODEL} brings its own motion adapter and config: drop "
                              "--motion-adapter/--base-config", given)
        check_installed()
    elif model == "tiny":
        if motion_adapter or base_config:
            raise OptionError("--model tiny builds its own tiny random model and motion adapter: drop "
                              "--motion-adapter/--base-config", given)
    elif model:
        loading.check_source(model, "base model", "--model")
        loading.check_source(motion_adapter or loading.DEFAULT_MOTION_ADAPTER, "motion adapter", "--motion-adapter")
        if base_config:
            loading.check_source(base_config, "base config", "--base-config")


@hookimpl
def register_backbones(register):
    register(
        BackboneSpec(
            name="animatediff",
            schedulers=("ddim", "ddpm"),  # diffusers' DDIMScheduler, SD-1.5 betas
            free_init=True,  # scaled-linear betas keep 0.068 of a sample at t = T
            text_context_length=77,  # CLIP ViT-L/14
            load=load,
            check=check,
            description="AnimateDiff: SD-1.5 base (folder, hub id or single file) + motion adapter; --model toy (bundled, "
            "trained offline) or tiny (random) run anywhere",
            motionprompt_defaults=motionprompt_defaults,
            sampler_defaults=sampler_defaults,
            default_discriminator=default_discriminator,
            default_guidance_decoder=default_guidance_decoder,
            wrap=wrap,
            wraps=("AnimateDiffPipeline",),
            options=[
                click.Option(
                    ["--motion-adapter"],
                    default=None,
                    help="[animatediff] motion adapter: hub id, diffusers folder or original .ckpt "
                    "(default guoyww/animatediff-motion-adapter-v1-5-2)",
                ),
                click.Option(
                    ["--base-config"],
                    default=None,
                    help="[animatediff] diffusers SD-1.5 folder or hub id giving component configs for a single-file --model",
                ),
            ],
        )
    )
