"""CogVideoX backbone plugin for mpcore (registered through the ``mpcore`` entry-point group):
CogVideoX-2b / -5b text-to-video through diffusers; ``--model tiny`` runs anywhere."""

from __future__ import annotations

import click

from mpcore import OptionError, hookimpl
from mpcore.backbones import defaults_by_model, lazy_load
from mpcore.interfaces import BackboneSpec

__version__ = "0.1.0"

# CogVideoXPipeline.__call__'s defaults: 49 frames (13 latent frames) of 480x720, 50 steps, guidance 6
# (max_sequence_length 226: the transformer's max_text_seq_length, see --max-sequence-length)
COGVIDEOX_SAMPLER_DEFAULTS = dict(frames=49, height=480, width=720, steps=50, cfg_scale=6.0)

# The paper has no CogVideoX settings; by analogy with its AnimateDiff ones (mp_plugin_animatediff
# PAPER_MOTIONPROMPT_DEFAULTS): 1 token, K=3, the same fraction of the trajectory ([4, 15) of 50 steps,
# scaled to other step counts), one latent pair decoded (decoded_frames=2 latent frames -> one pair of
# video frames, see CogVideoXBackbone.decode_pairs), l_disc 1, l_tv 5 (both act on flow, not on the
# embedding). lr and l_reg act on the T5 token row and are rescaled for its larger scale. ASSUMED,
# unverified here (no T5-XXL weights): T5's token table is about s = 50x larger per element than CLIP
# ViT-L's (transformers initialises T5's shared embedding with std 1, CLIP's token embedding with
# std 0.02; the trained tables are assumed to keep that ratio). Adam moves each coordinate by about lr
# whatever the gradient's scale, so the same relative change per step is lr x s: 0.005 x 50 = 0.25.
# The T5 encoder RMS-normalises its input, so the loss gradient w.r.t. the row scales as 1/s while the
# regulariser's (2 l_reg (e - e_init)) scales as s: the paper's balance is l_reg / s^2 = 10 / 2500.
COGVIDEOX_MOTIONPROMPT_DEFAULTS = dict(
    num_tokens=1, iterations=3, reference_opt_range=(4, 15), decoded_frames=2,
    l_disc=1.0, l_tv=5.0, l_reg=0.004, lr=0.25,
)

sampler_defaults = defaults_by_model(COGVIDEOX_SAMPLER_DEFAULTS, tiny="mp_plugin_cogvideox.tiny:TINY_SAMPLER_DEFAULTS")
motionprompt_defaults = defaults_by_model(COGVIDEOX_MOTIONPROMPT_DEFAULTS)
load = lazy_load("mp_plugin_cogvideox.backbone")


def wrap(pipeline, **options):
    """``BackboneSpec.wrap``: :func:`mp_plugin_cogvideox.backbone.wrap` (what it changes on the pipeline, which
    scheduler it samples with), imported on first use."""
    from mp_plugin_cogvideox.backbone import wrap as wrap_pipeline

    return wrap_pipeline(pipeline, **options)


def check(model: str | None, max_sequence_length: int | None = None, **_) -> None:
    """Cheap checks before any weights load: a local --model that is missing or not a CogVideoX folder."""
    from mp_plugin_cogvideox import loading

    if max_sequence_length is not None and max_sequence_length < 1:
        raise OptionError(f"--max-sequence-length must be >= 1, got {max_sequence_length}", "--max-sequence-length")
    if model != "tiny":
        loading.check_source(model or loading.DEFAULT_MODEL)


def expected_keys(variant: str | None = None, config: str | None = None) -> dict:
    """``mpcore weights expected/check``: the transformer checkpoint's keys (variant 2b | 5b, or a config)."""
    from mp_plugin_cogvideox import loading

    return loading.expected_keys(variant, config)


def read_weights(path: str) -> dict:
    """The transformer checkpoint (a .safetensors file, its sharded .index.json, or a folder) as meta tensors."""
    from mp_plugin_cogvideox import loading

    return loading.read_weights(path)


@hookimpl
def register_backbones(register):
    register(
        BackboneSpec(
            name="cogvideox",
            schedulers=(),  # its own CogVideoX DDIM / DPM (v-prediction, zero terminal SNR)
            free_init=False,  # zero terminal SNR: nothing of a sample survives to t = T
            text_context_length=226,  # T5, the transformer's max_text_seq_length
            load=load,
            check=check,
            description="CogVideoX-2b/-5b text-to-video (diffusers folder or hub id THUDM/CogVideoX-2b, -5b); "
            "--model tiny (random) runs anywhere",
            motionprompt_defaults=motionprompt_defaults,
            sampler_defaults=sampler_defaults,
            expected_keys=expected_keys,
            read_weights=read_weights,
            spatial_multiple=16,  # VAE 8x, patch 2
            temporal_compression=4,
            # the 5b's recommended dtype; the 2b was released in float16 (pass --dtype float16 for it)
            cuda_dtype="bfloat16",
            wrap=wrap,
            wraps=("CogVideoXPipeline",),
            options=[
                click.Option(["--max-sequence-length"], type=int, default=None,
                             help="[cogvideox] text tokens the T5 encoder sees (default: the pipeline's, "
                             "CogVideoX 226; CogVideoX-2b accepts only 226)"),
                click.Option(["--vae-tiling"], is_flag=True, default=None,
                             help="[cogvideox] decode the VAE in overlapping spatial tiles (less memory)"),
                click.Option(["--vae-slicing"], is_flag=True, default=None,
                             help="[cogvideox] decode batched videos one at a time (less memory)"),
            ],
        )
    )
