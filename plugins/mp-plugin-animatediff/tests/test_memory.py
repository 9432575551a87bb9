"""Memory of the AnimateDiff backbone (issue 18): denoiser checkpointing of whole layers, so a guided step
keeps only layer inputs; no second copy of the motion modules."""

from __future__ import annotations

import torch

from mp_plugin_animatediff.backbone import load, unet_layers


def _saved_bytes_and_grad(backbone, checkpointing: bool):
    """Bytes of the tensors autograd saves for the backward of one conditional forward, and the
    gradient w.r.t. the text condition."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 4, 8, 8, generator=generator)
    cond = backbone.encode_prompt(["a fox"]).detach().requires_grad_(True)
    storages: dict[int, int] = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    backbone.set_denoiser_checkpointing(checkpointing)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            output = backbone.predict(latents, torch.tensor(500), cond)
        output[:, :, :2].square().sum().backward()
    finally:
        backbone.set_denoiser_checkpointing(False)
    return sum(storages.values()), cond.grad.clone()


def test_block_checkpointing_keeps_a_small_fraction_and_the_same_gradient():
    backbone = load("tiny", seed=0)
    plain_bytes, plain_grad = _saved_bytes_and_grad(backbone, False)
    lean_bytes, lean_grad = _saved_bytes_and_grad(backbone, True)
    # diffusers' ResNet-only checkpointing keeps about half; whole layers keep only their inputs
    assert lean_bytes < 0.2 * plain_bytes, (lean_bytes, plain_bytes)
    assert torch.equal(plain_grad, lean_grad)
    assert plain_grad.abs().sum() > 0


def test_switching_checkpointing_off_restores_the_blocks():
    backbone = load("tiny", seed=0)
    blocks = unet_layers(backbone.unet)
    assert any(type(block).__name__ == "AnimateDiffTransformer3D" for block in blocks)  # motion modules too
    backbone.set_denoiser_checkpointing(True)
    backbone.set_denoiser_checkpointing(True)  # idempotent: not wrapped twice
    assert all("forward" in vars(block) for block in blocks)
    backbone.set_denoiser_checkpointing(False)
    assert not any("forward" in vars(block) for block in blocks)
    bytes_after, _ = _saved_bytes_and_grad(backbone, False)
    plain_bytes, _ = _saved_bytes_and_grad(load("tiny", seed=0), False)
    assert bytes_after == plain_bytes


def test_the_loaded_pipeline_keeps_no_second_copy_of_the_motion_modules():
    backbone = load("tiny", seed=0)
    assert backbone.pipe.motion_adapter is None
    assert any("motion_modules." in name for name, _ in backbone.unet.named_parameters())
