"""LVDMBackbone.encode (inherited by DynamiCrafter): the VAE posterior mean of each frame, unscaled,
in the frames' order; checked against the VAE's own sampler ``encode_sample``."""

from __future__ import annotations

import pytest
import torch

from mpcore.testing import check_encode_contract

from mp_plugin_lvdm.backbone import DynamiCrafterBackbone, LVDMBackbone, load


@pytest.mark.parametrize("backbone_name,variant", [("videocrafter2", None), ("dynamicrafter", "256")],
                         ids=["videocrafter2", "dc256"])
def test_encode_is_the_unscaled_posterior_mean_of_each_frame_in_order(backbone_name, variant):
    backbone = load("tiny", seed=0, backbone=backbone_name, variant=variant)  # DC: no image needed to encode
    assert type(backbone).encode is LVDMBackbone.encode
    assert isinstance(backbone, DynamiCrafterBackbone) == (backbone_name == "dynamicrafter")
    images, latents = check_encode_contract(backbone)
    # encode_sample(x, g) = mean + std * randn(g): with the true mean, (s1 - m) * n2 = (s2 - m) * n1 = std n1 n2;
    # a scaled or sampled "mean" breaks it (the std is not negligible here)
    with torch.no_grad():
        s1, s2 = (backbone.vae.encode_sample(images, torch.Generator().manual_seed(s)) for s in (1, 2))
    n1, n2 = (torch.randn(latents.shape, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    torch.testing.assert_close((s1 - latents) * n2, (s2 - latents) * n1, atol=1e-4, rtol=1e-4)
    assert (s1 - latents).abs().mean() > 1e-2 and backbone.latent_scale(0) != 1.0
