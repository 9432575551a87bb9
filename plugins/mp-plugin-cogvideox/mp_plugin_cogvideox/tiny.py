"""The reserved model name ``tiny``: a tiny random-init CogVideoX.

The real architecture family -- ``CogVideoXTransformer3DModel`` (expert-adaLN DiT), the causal 3D VAE
``AutoencoderKLCogVideoX`` (8x space, 4x time), a T5 v1.1-style encoder (gated-GELU) -- at the sizes
of diffusers' own CogVideoX pipeline tests (4 heads x 8 .. here 2 x 16, one layer, VAE widths 8, 4
latent channels), with :func:`mpcore.backbones.tiny_t5_tokenizer` (a sentencepiece-style tokenizer
trained offline; the T5 vocabulary is larger than it). Deterministic in the seed; its output is noise.

Two variants, so both released configurations are exercised offline:

* ``2b`` (``--model tiny``): sincos positional embeddings, ``CogVideoXDDIMScheduler`` with the 2b
  folder's settings, VAE scaling factor 1.15258426;
* ``5b``: rotary embeddings, ``CogVideoXDPMScheduler`` (the 5b folder's scheduler class; snr_shift_scale
  1.0 here, to exercise a second value of the shift), VAE scaling factor 0.7.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import torch

from mp_plugin_cogvideox.loading import COGVIDEOX_SCHEDULER, VAE_SCALING_FACTOR

TINY_SAMPLER_DEFAULTS = dict(frames=9, height=32, width=32, steps=10, cfg_scale=6.0)
"""9 frames = 3 latent frames of 4x4 (2x2 patches): ``mpcore run`` in seconds."""
TINY_TEXT_LENGTH = 32
"""The tiny transformer's ``max_text_seq_length`` (the text length it encodes with by default)."""
TINY_VARIANTS = ("2b", "5b")


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from mpcore.backbones import tiny_t5_tokenizer

    return tiny_t5_tokenizer()


def tiny_tokenizer():
    """A fresh copy of the tiny T5 tokenizer (MotionPrompt adds its tokens to the copy it is given)."""
    return copy.deepcopy(_tokenizer())


def tiny_components(seed: int = 0, variant: str = "2b") -> dict[str, Any]:
    """Random-init components of :class:`diffusers.CogVideoXPipeline`, deterministic in ``seed``."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    if variant not in TINY_VARIANTS:
        raise ValueError(f"unknown tiny CogVideoX variant {variant!r}; known: {', '.join(TINY_VARIANTS)}")
    tokenizer = tiny_tokenizer()
    text_width = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
            text_embed_dim=text_width, num_layers=1, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
            temporal_compression_ratio=4, max_text_seq_length=TINY_TEXT_LENGTH,
            use_rotary_positional_embeddings=variant == "5b",
        )
        vae = AutoencoderKLCogVideoX(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
            scaling_factor=VAE_SCALING_FACTOR[variant],
        )
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=max(320, len(tokenizer)), d_model=text_width, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0, dropout_rate=0.0,
        ))
    if variant == "2b":
        scheduler = CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER)
    else:
        scheduler = CogVideoXDPMScheduler(**dict(COGVIDEOX_SCHEDULER, snr_shift_scale=1.0))
    return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def save_tiny(folder: str | Path, seed: int = 0, variant: str = "2b") -> Path:
    """Write the tiny model as a CogVideoX diffusers folder (``CogVideoXPipeline.save_pretrained``:
    model_index.json and the five component folders), as a downloaded model looks."""
    from diffusers import CogVideoXPipeline

    folder = Path(folder)
    CogVideoXPipeline(**tiny_components(seed, variant)).save_pretrained(folder)
    return folder
