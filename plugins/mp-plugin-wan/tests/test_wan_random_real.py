"""Wan 2.1 T2V 1.3B at the real size with random weights (benchmarks' ``--config real-random``): the
architecture on the meta device (nothing allocated) holds the checkpoint keys ``mpcore weights`` expects;
the materialized path runs at tiny widths."""

from __future__ import annotations

import pytest
import torch

from mp_plugin_wan.loading import expected_keys
from mp_plugin_wan.random_real import REAL_SAMPLER, load_random_real, random_real_components
from mp_plugin_wan.tiny import TINY_TRANSFORMER, TINY_VAE
from mpcore.config import SamplerConfig
from mpcore.sampling import sample


@pytest.fixture(scope="module")
def meta_parts():
    return random_real_components(device="meta")


def shapes(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_the_real_random_transformer_is_the_released_1_3b(meta_parts):
    transformer = meta_parts["transformer"]
    assert shapes(transformer) == expected_keys("1.3B")
    assert all(p.is_meta for p in transformer.parameters())  # nothing allocated
    assert not any(b.is_meta for b in transformer.buffers())  # the rotary tables are computed for real
    # computed here from the configs (not read off a download): the "1.3B" transformer
    assert sum(p.numel() for p in transformer.parameters()) == 1_418_996_800
    assert REAL_SAMPLER == dict(frames=81, height=480, width=832)


def test_the_real_random_vae_and_text_encoder_fit_the_transformer(meta_parts):
    vae, text_encoder, transformer = meta_parts["vae"], meta_parts["text_encoder"], meta_parts["transformer"]
    assert (vae.config.z_dim, vae.config.scale_factor_temporal, vae.config.scale_factor_spatial) == (16, 4, 8)
    assert vae.config.z_dim == transformer.config.in_channels == transformer.config.out_channels
    assert text_encoder.get_input_embeddings().weight.shape == (256384, 4096) == (
        text_encoder.config.vocab_size, transformer.config.text_dim)
    assert len(text_encoder.encoder.block) == 24
    # computed here from the configs: the Wan 2.1 VAE and UMT5-XXL's encoder
    assert sum(p.numel() for p in vae.parameters()) == 126_892_531
    assert sum(p.numel() for p in text_encoder.parameters()) == 5_680_910_336
    # every tokenizer id has an embedding row
    assert len(meta_parts["tokenizer"]) < text_encoder.config.vocab_size


SMALL = dict(transformer=TINY_TRANSFORMER, vae=TINY_VAE,
             text_encoder=dict(vocab_size=320, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                               relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                               is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1,
                               decoder_start_token_id=0))


def test_materialized_weights_are_finite_deterministic_and_sample():
    backbone = load_random_real(seed=3, arch=SMALL)
    again = load_random_real(seed=3, arch=SMALL)
    other = load_random_real(seed=4, arch=SMALL)
    params = dict(backbone.transformer.named_parameters())
    assert all(torch.isfinite(p).all() for p in params.values())
    assert all(torch.equal(p, q) for p, q in zip(params.values(), again.transformer.parameters()))
    assert not torch.equal(params["patch_embedding.weight"], other.transformer.patch_embedding.weight)
    assert backbone.vae.dtype == torch.float32 and backbone.is_random_init
    assert backbone.describe()["model"].startswith("real-random")
    result = sample(backbone, "a horse", SamplerConfig(steps=2, frames=5, height=32, width=32, seed=0), None,
                    progress=False)
    assert result.latents.shape == (1, 16, 2, 4, 4) and torch.isfinite(result.latents).all()


def test_the_guidance_benchmark_runs_wan_without_the_tiny_decoder_modes():
    """benchmarks/bench_guidance.py --backbone wan: the real-random size, and no -tiny modes by default
    (MotionPrompt refuses a tiny single-frame decoder on a causal video VAE)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_guidance.py"
    spec = importlib.util.spec_from_file_location("bench_guidance_wan", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.resolve_args(bench.build_parser().parse_args(["--backbone", "wan", "--device", "cpu"]))
    assert args.mode_list == [m for m in bench.MODES if not m.endswith(bench.TINY_SUFFIX) and m != bench.FLOWMO]
    assert "fast" in args.mode_list and "lean" in args.mode_list
    assert bench.video_shape(bench.REAL_RANDOM, "wan") == REAL_SAMPLER
    assert bench.paper_settings("wan")["lr"] == 0.25
