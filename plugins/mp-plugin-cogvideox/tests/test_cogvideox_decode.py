"""The causal-VAE frame-pair decode (``decode_pairs``) and the video decode of the cogvideox backbone.

Each latent pair (k, k+1) is decoded alone, as a 2-latent-frame video of 8 frames, and window frames
(3, 4) are returned (see ``CogVideoXBackbone.decode_pairs``). Where the window is a cache-free batch of
the full decode -- pair (0, 1) of a video with an even number of latent frames -- it must equal the full
decode's frames 3, 4 exactly (tolerance 0: the same ops on the same numbers). Elsewhere the difference
is measured (printed with -s; the README quotes it), not asserted.
"""

from __future__ import annotations

import pytest
import torch

from mp_plugin_cogvideox.backbone import WINDOW_LATENT_FRAMES


def full_frames(backbone, latents):
    """The full decode of raw latents (1, C, F, h, w) as frames (F_video, 3, H, W), no clamp."""
    with torch.no_grad():
        return backbone.vae.decode(latents).sample[0].permute(1, 0, 2, 3)


def pair_latents(latents, k):
    """Latent frames (k, k + 1) of (1, C, F, h, w) as decode_pairs takes them: (2, C, h, w)."""
    return latents[0, :, k : k + WINDOW_LATENT_FRAMES].permute(1, 0, 2, 3)


def full_pair_index(latent_frames: int, k: int) -> list[int]:
    """The video frames of the full decode that window frames (3, 4) of pair (k, k+1) stand for."""
    return [4 * k, 4 * k + 1] if latent_frames % 2 else [4 * k + 3, 4 * k + 4]


@pytest.mark.parametrize("latent_frames", [2, 4])
def test_the_window_equals_the_full_decode_where_it_is_a_cache_free_batch(tiny_2b, latent_frames):
    latents = torch.randn(1, 4, latent_frames, 4, 4, generator=torch.Generator().manual_seed(latent_frames))
    full = full_frames(tiny_2b, latents)
    assert full.shape[0] == 4 * latent_frames  # an even number of latent frames: 4 video frames each
    with torch.no_grad():
        window = tiny_2b.decode_pairs(pair_latents(latents, 0))
    assert window.shape == (2, 3, 32, 32)
    assert torch.equal(window, full[full_pair_index(latent_frames, 0)])


def test_the_window_difference_elsewhere_is_measured(tiny_2b):
    """The pipeline's layout (13 latent frames = 49 video frames): no pair is a cache-free batch."""
    latents = torch.randn(1, 4, 13, 4, 4, generator=torch.Generator().manual_seed(13))
    full = full_frames(tiny_2b, latents)
    assert full.shape[0] == 49
    rows = []
    for k in range(12):
        with torch.no_grad():
            window = tiny_2b.decode_pairs(pair_latents(latents, k))
        reference = full[full_pair_index(13, k)]
        difference = (window - reference).abs()
        std = reference.std().item()
        rows.append((k, difference.max().item() / std, difference.mean().item() / std))
        assert torch.isfinite(difference).all()
    print("\nwindow vs full decode, 13 latent frames (k, max |diff| / std, mean |diff| / std of the two frames):")
    for k, largest, mean in rows:
        print(f"  k={k:2d}  {largest:.2f}  {mean:.2f}")


def test_pairs_are_decoded_independently_and_in_order(tiny_2b):
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4, 4, 4, generator=generator), torch.randn(2, 4, 4, 4, generator=generator)
    with torch.no_grad():
        both = tiny_2b.decode_pairs(torch.cat([a, b]))
        alone = torch.cat([tiny_2b.decode_pairs(a), tiny_2b.decode_pairs(b)])
    # batching two windows: the same per window up to the batched convolutions' rounding (measured 4e-6)
    torch.testing.assert_close(both, alone, rtol=0, atol=2e-5)
    assert not torch.allclose(both[:2], both[2:])


def test_decode_pairs_is_differentiable_and_checkpointing_keeps_the_gradient(tiny_2b):
    latents = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    grads = []
    for checkpoint in (False, True):
        x = latents.clone().requires_grad_(True)
        tiny_2b.decode_pairs(x, checkpoint=checkpoint).square().mean().backward()
        grads.append(x.grad)
        assert tiny_2b.vae.decoder.gradient_checkpointing == checkpoint
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-7)  # recomputed forward: same numbers


def test_decode_video_frames(tiny_2b):
    latents = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 3
    frames = tiny_2b.decode_video(latents)
    assert frames.shape == (9, 3, 32, 32) and frames.dtype == torch.float32  # 1 + 4 * (3 - 1) frames
    assert frames.min() >= -1 and frames.max() <= 1
    unclamped = full_frames(tiny_2b, 1 / tiny_2b.latent_scale() * latents)  # as the pipeline scales
    torch.testing.assert_close(frames, unclamped.clamp(-1, 1), rtol=0, atol=1e-6)
