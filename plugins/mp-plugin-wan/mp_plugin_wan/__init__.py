"""Wan 2.1 text-to-video backbone plugin for mpcore (registered through the ``mpcore`` entry-point group).

``mpcore run --backbone wan --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --prompt "..."`` (a diffusers folder
or hub id; ``--model tiny`` builds a tiny random model offline). Sampling is ``WanPipeline``'s: the folder's
scheduler (UniPC, flow shift 3.0), 81 frames at 480x832, 50 steps, CFG 5.0, 512 text tokens.

MotionPrompt defaults (:data:`WAN_MOTIONPROMPT_DEFAULTS`): the paper has none for Wan, so they are chosen
by analogy with its AnimateDiff settings (50 sampling steps there as here): 1 token, K = 3, the same
fraction of the trajectory (steps 4..14 of 50, scaled to other step counts), one latent pair decoded
(decoded_frames = 2: a two-latent-frame causal window, see ``WanBackbone.decode_pairs``), l_disc 1 and
l_tv 5 as AnimateDiff's. The token lives in UMT5's input embedding, whose scale is not CLIP's:

* Adam moves every element by about ``lr`` per step whatever the gradient's scale, so the lr should
  scale with the elements' magnitude s: transformers initialises T5-family embeddings with std 1.0 and
  CLIP's token embedding with std 0.02; ASSUMING the trained tables keep that ratio (s = 50, not
  measured here: no weights on this machine), lr = 0.005 x 50 = 0.25.
* L_reg = ||e - e_init||^2 grows as s^2 for the same relative drift, while the flow loss's gradient
  w.r.t. the embedding shrinks as 1/s (UMT5 RMS-normalises its input first), so to keep their balance
  l_reg = 10 / s^2 = 0.004.

Both are unverified guesses; ``mpcore diagnose`` / a sweep on a GPU should confirm them (README "Wan 2.1").
"""

from __future__ import annotations

import click

from mpcore import OptionError, hookimpl
from mpcore.backbones import defaults_by_model, lazy_load
from mpcore.interfaces import BackboneSpec

__version__ = "0.1.0"

EMBEDDING_SCALE = 50.0
"""Assumed ratio of UMT5's to CLIP's input-embedding element scale (init std 1.0 vs 0.02; unverified)."""
WAN_MOTIONPROMPT_DEFAULTS = dict(
    num_tokens=1, iterations=3, reference_opt_range=(4, 15), decoded_frames=2,
    l_disc=1.0, l_tv=5.0, l_reg=10.0 / EMBEDDING_SCALE**2, lr=0.005 * EMBEDDING_SCALE,
)
# WanPipeline.__call__'s defaults
WAN_SAMPLER_DEFAULTS = dict(frames=81, height=480, width=832, steps=50, cfg_scale=5.0)

sampler_defaults = defaults_by_model(WAN_SAMPLER_DEFAULTS, tiny="mp_plugin_wan.tiny:TINY_SAMPLER_DEFAULTS")
motionprompt_defaults = defaults_by_model(WAN_MOTIONPROMPT_DEFAULTS)
load = lazy_load("mp_plugin_wan.backbone")


def wrap(pipeline, **options):
    """``BackboneSpec.wrap``: :func:`mp_plugin_wan.backbone.wrap` (what it changes on the pipeline, which
    scheduler it samples with), imported on first use."""
    from mp_plugin_wan.backbone import wrap as wrap_pipeline

    return wrap_pipeline(pipeline, **options)


def check(model: str | None, max_sequence_length: int | None = None, flow_shift: float | None = None, **_) -> None:
    """Cheap checks before any weights load: the text length, the flow shift, a local folder's components."""
    from mp_plugin_wan import loading

    if max_sequence_length is not None and max_sequence_length < 1:
        raise OptionError(f"--max-sequence-length must be >= 1, got {max_sequence_length}", "--max-sequence-length")
    if flow_shift is not None and not flow_shift > 0:
        raise OptionError(f"--flow-shift must be a number > 0 (the folder's is 3.0), got {flow_shift}", "--flow-shift")
    if model != "tiny":
        loading.check_source(model or loading.DEFAULT_MODEL)


def expected_keys(variant: str | None = None, config: str | None = None) -> dict[str, tuple[int, ...]]:
    from mp_plugin_wan.loading import expected_keys as expected

    return expected(variant, config)


def read_weights(path: str) -> dict:
    from mp_plugin_wan.loading import read_weights as read

    return read(path)


@hookimpl
def register_backbones(register):
    register(
        BackboneSpec(
            name="wan",
            schedulers=(),  # flow matching (UniPC / Euler): no DDIM betas to swap rules on
            free_init=False,  # flow matching: x_1 is pure noise, nothing of a sample survives
            text_context_length=512,  # UMT5, the pipeline's max_sequence_length
            load=load,
            check=check,
            description="Wan 2.1 text-to-video (flow-matching DiT, causal 3D VAE, UMT5): a diffusers folder or hub id "
            "(default Wan-AI/Wan2.1-T2V-1.3B-Diffusers); --model tiny (random) runs anywhere",
            motionprompt_defaults=motionprompt_defaults,
            sampler_defaults=sampler_defaults,
            expected_keys=expected_keys,
            read_weights=read_weights,
            spatial_multiple=16,  # VAE 8x times the transformer's 2x2 patches
            temporal_compression=4,
            cuda_dtype="bfloat16",
            wrap=wrap,
            wraps=("WanPipeline",),
            options=[
                click.Option(["--max-sequence-length"], type=int, default=None,
                             help="[wan] text tokens the T5-family encoder sees (default: the pipeline's, 512 for wan)"),
                click.Option(["--vae-tiling"], is_flag=True, default=None,
                             help="[wan] decode the final video with the VAE's spatial tiling (less memory)"),
                click.Option(["--flow-shift"], type=float, default=None,
                             help="[wan] the scheduler's sigma shift (default: the model folder's, 3.0; Wan's own "
                                  "scripts and FlowMo's published run use 5.0)"),
            ],
        )
    )
