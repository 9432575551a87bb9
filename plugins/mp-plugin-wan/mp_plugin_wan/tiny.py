"""The reserved model name ``tiny``: a tiny random-init Wan 2.1 model.

The same architecture family as the released model (WanTransformer3DModel with patch (1, 2, 2), RMS
q/k norm across heads and cross-attention norm; AutoencoderKLWan with 4x causal temporal and 8x spatial
compression, 16 latent channels and the real latent mean/std; a UMT5 encoder; UniPC on flow sigmas with
flow shift 3.0, as the official folders' scheduler), at the sizes of diffusers' own WanPipeline tests,
so it samples in seconds on a CPU. The tokenizer is :func:`mpcore.backbones.tiny_t5_tokenizer` (a small
T5-style sentencepiece tokenizer trained offline), the UMT5 vocabulary sized to hold it. Built
deterministically from a seed; its output is noise: it exists so the whole path (and every test) runs
anywhere, offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from mp_plugin_wan.loading import FLOW_SCHEDULER
from mpcore.backbones import tiny_t5_tokenizer

# 9 frames (3 latent frames), 32 x 32 pixels (4 x 4 latents, 2 x 2 patches), 10 steps; WanPipeline's CFG 5.0
TINY_SAMPLER_DEFAULTS = dict(frames=9, height=32, width=32, steps=10, cfg_scale=5.0)

# diffusers' tests/pipelines/wan/test_wan.py dummy transformer
TINY_TRANSFORMER: dict[str, Any] = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32)
# diffusers' dummy VAE uses base_dim 3, whose up-sampling halves the width to a single channel: the
# decoder's RMS norms then output a sign (+-1). base_dim 8 keeps every norm over several channels, so
# the decoded frames (and the causal-window measurement of decode_pairs) depend smoothly on the latents.
TINY_VAE: dict[str, Any] = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                temperal_downsample=[False, True, True])


def tiny_umt5(vocab_size: int) -> UMT5EncoderModel:
    """A random-init UMT5 encoder (text_dim 32, 2 layers) with ``vocab_size`` rows, from the current RNG."""
    return UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                       relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                       feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
                                       pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def tiny_components(seed: int = 0) -> dict[str, Any]:
    """Random-init components, deterministic in ``seed``: ``transformer``, ``vae``, ``text_encoder``,
    ``tokenizer``, ``scheduler`` (the pipeline's components) and ``scheduler_class``/``scheduler_config``."""
    tokenizer = tiny_t5_tokenizer()
    vocab = -(-len(tokenizer) // 64) * 64  # rounded up to a multiple of 64, as real vocabularies are padded
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(**TINY_TRANSFORMER)
        vae = AutoencoderKLWan(**TINY_VAE)
        text_encoder = tiny_umt5(vocab)
    scheduler = UniPCMultistepScheduler(**FLOW_SCHEDULER)
    return dict(transformer=transformer.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                scheduler=scheduler, scheduler_class=UniPCMultistepScheduler, scheduler_config=dict(scheduler.config))


def pipeline_components(parts: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``WanPipeline`` among ``parts``."""
    return {k: parts[k] for k in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")}


def save_tiny(folder: str | Path, seed: int = 0) -> Path:
    """Save the tiny model as the official Diffusers folders look (``WanPipeline.save_pretrained``:
    model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/). Returns the folder."""
    from diffusers import WanPipeline

    folder = Path(folder)
    WanPipeline(**pipeline_components(tiny_components(seed))).save_pretrained(folder)
    return folder
