"""Fixtures of the wan plugin tests: the tiny random Wan's components and backbones built from them (as
diffusers' WanPipeline tests build dummy components), and small stand-in flow/discriminator."""

from __future__ import annotations

import pytest
import torch

from mp_plugin_wan.backbone import WanBackbone, place
from mp_plugin_wan.tiny import tiny_components

def tiny_backbone(parts: dict | None = None, max_sequence_length: int = 512) -> WanBackbone:
    """A WanBackbone on the CPU in float32 over ``parts`` (default: fresh tiny components, seed 0)."""
    parts = parts or tiny_components(0)
    place(parts, torch.device("cpu"), torch.float32, offload=False)
    return WanBackbone(parts, torch.device("cpu"), torch.float32, {"model": "tiny", "seed": 0},
                       max_sequence_length=max_sequence_length, is_random_init=True)


@pytest.fixture(scope="session")
def make_backbone():
    """:func:`tiny_backbone`, for tests that need fresh backbones (e.g. MotionPrompt adds tokens)."""
    return tiny_backbone


@pytest.fixture(scope="module")
def parts():
    """Tiny components shared by the tests of a module that do not change them (no learnable tokens)."""
    return tiny_components(0)


@pytest.fixture(scope="module")
def backbone(parts):
    return tiny_backbone(parts)
