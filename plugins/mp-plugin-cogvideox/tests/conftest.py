"""Fixtures of the CogVideoX plugin tests: tiny random CogVideoX backbones (the 2b-style one with DDIM
and sincos positions, the 5b-style one with DPM and rotary embeddings) and small stand-in flow /
discriminator modules (as in the core tests)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tests are timed on one core; the tiny models gain nothing from more threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_2b():
    from mp_plugin_cogvideox.backbone import load

    return load("tiny", tiny_variant="2b")
