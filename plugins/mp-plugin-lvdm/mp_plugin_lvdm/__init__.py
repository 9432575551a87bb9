"""The lvdm family for mpcore: VideoCrafter2 (text-to-video) and DynamiCrafter (image-to-video; 256, 512,
1024), registered as backbones ``videocrafter2`` and ``dynamicrafter`` through the ``mpcore`` entry points.

Our own implementation (:mod:`mp_plugin_lvdm.unet`, ``vae``, ``clip``, ``model``) written from lvdm's code
in VideoCrafter2 (github.com/AILab-CVC/VideoCrafter) and DynamiCrafter (github.com/Doubiiu/DynamiCrafter);
it loads the official ``model.ckpt`` files strictly and offline::

    mpcore run --backbone videocrafter2 --model checkpoints/base_512_v2/model.ckpt --prompt "..."
    mpcore run --backbone dynamicrafter --variant 512 --model dynamicrafter_512/model.ckpt --image start.png --prompt "..."

MotionPrompt defaults. VideoCrafter2: the paper's (VIDEOCRAFTER2_MOTIONPROMPT_DEFAULTS: 1 token, K=3,
3 < i < 20, 6 decoded frames, l_disc 1, l_tv 5, l_reg 3, lr 1e-3). DynamiCrafter: the paper reports
none, so we use VideoCrafter2's. DynamiCrafter's denoiser is VideoCrafter's UNet (same blocks, same
16-frame temporal layers) fine-tuned with the same OpenCLIP ViT-H/14 text encoder, so the learnable
token lives in the same embedding space (same row norms, hence the same lr and l_reg), the clips have
the same 16 frames (6 decoded frames = 3 pairs), and both sample 50 DDIM steps; the image condition
fixes appearance, which leaves the motion the token can act on. Override any of them with ``-o``.
"""

from __future__ import annotations

import click

from mpcore import OptionError, hookimpl
from mpcore.backbones import defaults_by_model, lazy_load, sd_tiny_decoder
from mpcore.interfaces import BackboneSpec

__version__ = "0.1.0"

# The MotionPrompt paper's VideoCrafter2 settings ("3 < i < 20" of 50 DDIM steps stored as the
# half-open [4, 20), scaled to other step counts); DynamiCrafter's are the same (see above).
VIDEOCRAFTER2_MOTIONPROMPT_DEFAULTS = dict(
    num_tokens=1, iterations=3, reference_opt_range=(4, 20), decoded_frames=6,
    l_disc=1.0, l_tv=5.0, l_reg=3.0, lr=0.001,
)
DYNAMICRAFTER_MOTIONPROMPT_DEFAULTS = dict(VIDEOCRAFTER2_MOTIONPROMPT_DEFAULTS)


# scripts/run_text2video.sh: 16 frames at 320x512, 50 DDIM steps, eta 1.0, cfg 12
VIDEOCRAFTER2_SAMPLER_DEFAULTS = dict(frames=16, height=320, width=512, steps=50, cfg_scale=12.0, eta=1.0)
# scripts/run.sh of the 512 variant (the default --variant); 256/1024: pass --height/--width
# (256x256, 576x1024): mpcore's sampler defaults do not see --variant
DYNAMICRAFTER_SAMPLER_DEFAULTS = dict(frames=16, height=320, width=512, steps=50, cfg_scale=7.5, eta=1.0)
_TINY_SAMPLER_DEFAULTS = "mp_plugin_lvdm.tiny:TINY_SAMPLER_DEFAULTS"  # --model tiny, imported when asked for

videocrafter2_motionprompt_defaults = defaults_by_model(VIDEOCRAFTER2_MOTIONPROMPT_DEFAULTS)
dynamicrafter_motionprompt_defaults = defaults_by_model(DYNAMICRAFTER_MOTIONPROMPT_DEFAULTS)


def _check(backbone: str):
    def check(model: str | None, config: str | None = None, variant: str | None = None, image: str | None = None,
              **_) -> None:
        """Cheap checks before any weights load: variant known, --image readable (dynamicrafter), the
        checkpoint file there, the config readable."""
        from mp_plugin_lvdm import configs, loading
        from mp_plugin_lvdm.image import check_image

        if backbone == "dynamicrafter":
            try:
                variant = configs.resolve_variant(variant)
            except ValueError as error:
                raise OptionError(str(error), "--variant") from None
            check_image(image)
        if model == "tiny":
            if config:
                raise OptionError("--model tiny builds its own tiny random model: drop --config", "--config")
            return
        loading.check_checkpoint(model, backbone, variant)
        if config:
            try:
                configs.read_config(config)
            except ValueError as error:
                raise OptionError(str(error), "--config") from None

    return check


def dynamicrafter_free_init(model: str | None, options: dict) -> bool | None:
    """FreeInit needs some of a sample to survive to t = T: the 256 variant's betas keep it, 512 and 1024
    rescale to zero terminal SNR; a custom --config: not known before loading."""
    from mp_plugin_lvdm import configs

    if options.get("config"):
        return None
    return configs.resolve_variant(options.get("variant")) == "256"


def _expected_keys(backbone: str):
    def expected_keys(variant: str | None = None, config: str | None = None) -> dict[str, tuple[int, ...]]:
        """The checkpoint's key -> shape map (wrapper removed; the 256 file's ``framestride_embed`` read
        as ``fps_embedding``), built on the meta device."""
        from mp_plugin_lvdm import configs
        from mp_plugin_lvdm.model import expected_shapes

        return expected_shapes(configs.resolve(backbone, variant, config))

    return expected_keys


def read_weights(path: str) -> dict:
    from mp_plugin_lvdm.loading import read_checkpoint

    return read_checkpoint(path)


def _config_option() -> click.Option:
    return click.Option(
        ["--config"], default=None, metavar="PATH",
        help="[videocrafter2, dynamicrafter] model config YAML of the official inference schema "
             "(model.params.unet_config/first_stage_config/cond_stage_config...); default: the official config",
    )


def _guidance_rescale_option() -> click.Option:
    return click.Option(
        ["--guidance-rescale"], type=float, default=None,
        help="[videocrafter2, dynamicrafter] CFG rescale phi (default: 0.7 for dynamicrafter 512/1024, else 0)",
    )


@hookimpl
def register_backbones(register):
    register(
        BackboneSpec(
            name="videocrafter2",
            schedulers=(),  # lvdm's own DDIM (its timestep spacing and scale schedule)
            free_init=True,  # linear betas with the scale schedule keep 0.048 of a sample at t = T
            text_context_length=77,  # OpenCLIP ViT-H/14
            load=lazy_load("mp_plugin_lvdm.backbone", backbone="videocrafter2"),
            check=_check("videocrafter2"),
            description="VideoCrafter2 text-to-video (320x512, 16 frames): the official model.ckpt (--model); "
            "--model tiny (random) runs anywhere",
            motionprompt_defaults=videocrafter2_motionprompt_defaults,
            sampler_defaults=defaults_by_model(VIDEOCRAFTER2_SAMPLER_DEFAULTS, tiny=_TINY_SAMPLER_DEFAULTS),
            default_guidance_decoder=sd_tiny_decoder,  # the SD VAE's latent space: TAESD
            expected_keys=_expected_keys("videocrafter2"),
            read_weights=read_weights,
            options=[
                _config_option(),
                _guidance_rescale_option(),
                click.Option(["--cond-fps"], type=int, default=None,
                             help="[videocrafter2] fps conditioning value of the UNet (default 28, as the official script)"),
            ],
        )
    )
    register(
        BackboneSpec(
            name="dynamicrafter",
            schedulers=(),  # lvdm's own DDIM
            free_init=dynamicrafter_free_init,
            text_context_length=77,  # OpenCLIP ViT-H/14
            load=lazy_load("mp_plugin_lvdm.backbone", backbone="dynamicrafter"),
            check=_check("dynamicrafter"),
            description="DynamiCrafter image-to-video (--variant 256|512|1024, --image start.png): the official "
            "model.ckpt (--model); --model tiny (random) runs anywhere",
            motionprompt_defaults=dynamicrafter_motionprompt_defaults,
            sampler_defaults=defaults_by_model(DYNAMICRAFTER_SAMPLER_DEFAULTS, tiny=_TINY_SAMPLER_DEFAULTS),
            default_guidance_decoder=sd_tiny_decoder,  # the SD VAE's latent space: TAESD
            expected_keys=_expected_keys("dynamicrafter"),
            read_weights=read_weights,
            options=[
                _config_option(),
                _guidance_rescale_option(),
                click.Option(["--variant"], type=click.Choice(["256", "512", "1024"]), default=None,
                             help="[dynamicrafter] released variant: 256 (256x256), 512 (320x512, default), "
                                  "1024 (576x1024)"),
                click.Option(["--image"], default=None, metavar="PATH",
                             help="[dynamicrafter] the input image (start frame); resized to the short side and "
                                  "center-cropped to --height x --width"),
                click.Option(["--frame-stride"], type=int, default=None,
                             help="[dynamicrafter] fs conditioning: frame stride for 256 (default 3), FPS for "
                                  "512 (default 24) and 1024 (default 10)"),
            ],
        )
    )
