"""LaVie backbone plugin for mpcore (registered through the ``mpcore`` entry-point group).

``mpcore run --backbone lavie --model lavie_base.pt --base CompVis/stable-diffusion-v1-4 ...``: our own
implementation of LaVie's base UNet3D (:mod:`mp_plugin_lavie.unet`) loads the official checkpoint
strictly; VAE and CLIP text encoder come from Stable Diffusion v1.4.
"""

from __future__ import annotations

import click

from mpcore import OptionError, hookimpl
from mpcore.backbones import defaults_by_model, lazy_load, sd_tiny_decoder
from mpcore.interfaces import BackboneSpec

__version__ = "0.1.0"

# The MotionPrompt paper's LaVie settings: 1 token, K=3 updates per step, 5 < i < 15 of 50 DDIM steps
# (stored as the half-open [6, 15), scaled to other step counts), 6 decoded frames, l_disc 1, l_tv 1,
# l_reg 10, lr 5e-4.
PAPER_MOTIONPROMPT_DEFAULTS = dict(
    num_tokens=1, iterations=3, reference_opt_range=(6, 15), decoded_frames=6,
    l_disc=1.0, l_tv=1.0, l_reg=10.0, lr=0.0005,
)

# LaVie base: 16 frames at 320x512 (base/configs/sample.yaml of github.com/Vchitect/LaVie);
# the paper samples with 50 DDIM steps
sampler_defaults = defaults_by_model(dict(frames=16, height=320, width=512, steps=50, cfg_scale=7.5),
                                     tiny="mp_plugin_lavie.tiny:TINY_SAMPLER_DEFAULTS")
motionprompt_defaults = defaults_by_model(PAPER_MOTIONPROMPT_DEFAULTS)
load = lazy_load("mp_plugin_lavie.backbone")


def check(model: str | None, base: str | None = None, unet_config: str | None = None, **_) -> None:
    """Cheap checks before any weights load: --model and --base given, local files and folders there,
    the UNet config readable and supported."""
    from mp_plugin_lavie import loading
    from mp_plugin_lavie.unet import read_config

    if model == "tiny":
        if base or unet_config:
            raise OptionError("--model tiny builds its own tiny random model: drop --base/--unet-config",
                              "--base" if base else "--unet-config")
        return
    loading.check_checkpoint(model)
    loading.check_base(base)
    if unet_config:
        read_config(unet_config)


def expected_keys(variant: str | None = None, config: str | None = None) -> dict[str, tuple[int, ...]]:
    from mp_plugin_lavie.loading import expected_keys as expected

    return expected(variant, config)


def read_weights(path: str) -> dict:
    from mp_plugin_lavie.loading import read_checkpoint

    return read_checkpoint(path)


@hookimpl
def register_backbones(register):
    register(
        BackboneSpec(
            name="lavie",
            schedulers=("ddim", "ddpm"),  # DDIM; DDPM as LaVie's own script (make_ddpm_scheduler)
            free_init=True,  # linear betas keep 0.006 of a sample at t = T
            text_context_length=77,  # CLIP ViT-L/14
            load=load,
            check=check,
            description="LaVie base (320x512, 16 frames): lavie_base.pt (--model) + SD v1.4 VAE/text encoder (--base); "
            "--model tiny (random) runs anywhere",
            motionprompt_defaults=motionprompt_defaults,
            sampler_defaults=sampler_defaults,
            default_guidance_decoder=sd_tiny_decoder,  # SD v1.4's VAE: TAESD
            expected_keys=expected_keys,
            read_weights=read_weights,
            options=[
                click.Option(
                    ["--base"],
                    default=None,
                    help="[lavie] Stable Diffusion v1.4 diffusers folder or hub id (e.g. CompVis/stable-diffusion-v1-4) "
                    "giving the VAE, tokenizer and text encoder",
                ),
                click.Option(
                    ["--unet-config"],
                    default=None,
                    help="[lavie] diffusers UNet config JSON of the LaVie UNet (default: SD v1.4's unet/config.json, built in)",
                ),
            ],
        )
    )
