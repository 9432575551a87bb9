"""The ``flow_warp_error`` metric registered by the tvl1 plugin."""

from __future__ import annotations

import numpy as np
import pytest

from mpcore import plugins
from mpcore.toy import world as toyworld


def _metric():
    return plugins.get("metric", "flow_warp_error").spec.load(None, "cpu")


def test_registered_as_a_metric():
    spec = plugins.get("metric", "flow_warp_error").spec
    assert spec.vbench is False and "lower" in spec.description


def test_still_video_has_zero_error_and_broken_motion_has_more():
    metric = _metric()
    clip = toyworld.make_clip(next(s for s in range(100) if toyworld.sample_scene(s).motion == "right"))
    frames = clip.uint8()
    still = np.repeat(frames[:1], 4, axis=0)
    assert metric(still) == pytest.approx(0.0, abs=1e-4)
    smooth = metric(frames)
    # every other frame replaced by an unrelated clip's frame: the flow cannot explain the change
    other = toyworld.make_clip(12345).uint8()
    broken = frames.copy()
    broken[1::2] = other[1::2]
    assert smooth < 2.0 and metric(broken) > 3 * smooth


def test_hand_computed_on_a_shift_with_known_flow():
    """A frame shifted by exactly one pixel: TV-L1 finds flow ~(1, 0) and the warp error is small,
    far below the error of the zero flow (the plain frame difference)."""
    from mpcore.flows.evaluate import to_model_frames, warp_error
    import torch

    rng = np.random.default_rng(0)
    base = (rng.random((40, 41, 3)) * 255).astype(np.uint8)
    base = np.asarray(torch.nn.functional.avg_pool2d(torch.tensor(base).permute(2, 0, 1)[None].float(), 3, 1, 1)[0]
                      .permute(1, 2, 0).round().byte())
    frames = np.stack([base[:, 1:], base[:, :-1]])  # content moves one pixel right
    video = to_model_frames(frames)
    zero = warp_error(video[:1], video[1:], torch.zeros(1, 2, 40, 40))
    assert _metric()(frames) < 0.25 * zero


def test_needs_two_frames():
    with pytest.raises(ValueError, match="2 frames"):
        _metric()(np.zeros((1, 8, 8, 3), np.uint8))
