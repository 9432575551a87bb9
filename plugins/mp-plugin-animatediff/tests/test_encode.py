"""AnimateDiffBackbone.encode: the VAE posterior mean of each frame, unscaled, in the frames' order."""

from __future__ import annotations

import torch

from mpcore.testing import check_encode_contract

from mp_plugin_animatediff.backbone import load


def test_encode_is_the_unscaled_posterior_mean_of_each_frame_in_order():
    backbone = load("tiny", seed=0)
    images, latents = check_encode_contract(backbone)
    # the VAE's own posterior of the whole batch at once; no latent scale applied
    posterior = backbone.vae.encode(images).latent_dist
    torch.testing.assert_close(latents, posterior.mean, atol=1e-5, rtol=1e-4)
    assert backbone.latent_scale() != 1.0 and (posterior.std.mean() > 1e-2)  # so scale or sampling would show
