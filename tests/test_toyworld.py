"""The procedural toy world and its object measures (mpcore.toy.world, mpcore.toy.metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpcore.toy import metrics as toy_metrics
from mpcore.toy import world as toyworld


def test_clip_is_deterministic_per_seed_and_differs_across_seeds():
    a, b, c = toyworld.make_clip(5), toyworld.make_clip(5), toyworld.make_clip(6)
    assert a.caption == b.caption
    assert torch.equal(a.frames, b.frames) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.frames, c.frames)


@pytest.mark.parametrize("size,frames,objects", [(32, 8, 1), (48, 12, 3), (64, 16, 2)])
def test_clip_shapes_and_ranges(size, frames, objects):
    clips = [toyworld.make_clip(s, size=size, frames=frames, max_objects=objects) for s in range(6)]
    for clip in clips:
        n = len(clip.scene.objects)
        assert 1 <= n <= objects
        assert clip.frames.shape == (frames, 3, size, size)
        assert clip.masks.shape == (n, frames, size, size) and clip.centers.shape == (n, frames, 2)
        assert 0 <= float(clip.frames.min()) and float(clip.frames.max()) <= 1
        assert clip.uint8().shape == (frames, size, size, 3) and clip.uint8().dtype == np.uint8
    if objects > 1:
        assert any(len(c.scene.objects) > 1 for c in clips)
        multi = next(c for c in clips if len(c.scene.objects) > 1)
        assert multi.caption.count(", with a") == len(multi.scene.objects) - 1


def test_captions_parse_back_to_the_scene():
    for seed in range(300):
        scene = toyworld.sample_scene(seed, split="any")
        parsed = toyworld.parse_caption(scene.caption)
        first = scene.objects[0]
        assert (parsed["color"], parsed["shape"], parsed["background"], parsed["motion"]) == (
            first.color, first.shape, scene.background, scene.motion), scene.caption
    assert toyworld.sample_scene(0).caption.startswith(("a ", "an "))
    assert "a orange" not in " ".join(toyworld.sample_scene(s).caption for s in range(200))


def test_heldout_split_is_disjoint_from_train():
    train = [toyworld.sample_scene(s, split="train") for s in range(300)]
    heldout = [toyworld.sample_scene(s, split="heldout") for s in range(100)]
    combo = lambda s: (s.objects[0].color, s.objects[0].shape, s.motion)  # noqa: E731
    assert not any(toyworld.is_heldout_combo(*combo(s)) for s in train)
    assert all(toyworld.is_heldout_combo(*combo(s)) for s in heldout)
    assert {s.template for s in train} == set(toyworld.TRAIN_TEMPLATES)
    assert {s.template for s in heldout} == {*toyworld.TRAIN_TEMPLATES, toyworld.HELDOUT_TEMPLATE}
    with pytest.raises(ValueError, match="split"):
        toyworld.sample_scene(0, split="test")


def test_motion_follows_the_caption_and_stays_in_frame():
    seen = set()
    for seed in range(400):
        clip = toyworld.make_clip(seed)
        scene, path = clip.scene, clip.centers[0]
        seen.add(scene.motion)
        radius = scene.objects[0].radius
        assert float(path.min()) >= radius - 1e-4 and float(path.max()) <= scene.size - radius + 1e-4
        direction = toyworld.screen_direction(scene.motion)
        step = path[1:] - path[:-1]
        if direction is not None:  # constant velocity along the named direction
            unit = torch.tensor(direction, dtype=step.dtype)
            assert torch.allclose(step, step[0].expand_as(step), atol=1e-4)
            assert float(step[0] @ unit) > 0.7 and abs(float(step[0, 0] * unit[1] - step[0, 1] * unit[0])) < 1e-4
        elif scene.motion == "spinning":
            assert torch.allclose(step, torch.zeros_like(step)) and scene.objects[0].spin != 0
        else:  # bouncing: constant speed, reflections only
            speeds = step.norm(dim=1)
            assert float(speeds.max()) > 0.5
    assert seen == set(toyworld.MOTIONS)


def test_pan_moves_the_background_the_other_way():
    seed = next(s for s in range(200) if toyworld.sample_scene(s).motion == "pan_left"
                and toyworld.sample_scene(s).background == "striped")
    clip = toyworld.make_clip(seed)
    assert "camera panning left" in clip.caption
    # the object moves right on screen
    assert float(clip.centers[0, -1, 0] - clip.centers[0, 0, 0]) > 3
    # and so does the background: frame 1 equals frame 0 shifted right, away from the object
    pan = clip.scene.pan_velocity[0]
    background = clip.masks[0].amax(0) < 1e-3
    shifted = toyworld._background(clip.scene, *_grid(clip.scene.size, -pan))
    assert torch.allclose(clip.frames[1][:, background], shifted[:, background], atol=1e-5)


def _grid(size, dx):
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return x + dx, y


def test_color_mask_recovers_the_true_object_mask():
    for seed in range(40):
        clip = toyworld.make_clip(seed)
        truth = clip.masks[0]
        found = toyworld.color_mask(clip.frames, clip.scene.objects[0].color)
        inter = torch.minimum(truth, found).sum()
        union = torch.maximum(truth, found).sum()
        assert float(inter / union) > 0.7, clip.caption  # soft masks: anti-aliased edges count partly
        stats = toyworld.object_stats(clip.frames, found)
        assert torch.allclose(stats["centroid"], clip.centers[0], atol=0.6), clip.caption


def test_object_measures_on_real_clips():
    """Real clips: present everywhere, little drift, and the object always moves the captioned way."""
    rows = [toy_metrics.object_measures(toyworld.make_clip(s, split="any").uint8(), toyworld.make_clip(s, split="any").caption)
            for s in range(120)]
    directional = [r["direction_agreement"] for r in rows if r["direction_agreement"] is not None]
    assert len(directional) > 60 and all(v == 1.0 for v in directional)
    assert all(r["presence"] == 1.0 for r in rows)
    assert np.median([r["size_drift"] for r in rows]) < 0.05
    assert np.median([r["centroid_jerk"] for r in rows]) < 0.3  # sub-pixel: anti-aliased edges, uint8


def test_object_measures_detect_broken_motion():
    seed = next(s for s in range(100) if toyworld.sample_scene(s).motion in ("left", "right", "up", "down"))
    clip = toyworld.make_clip(seed)
    frames = clip.uint8()
    good = toy_metrics.object_measures(frames, clip.caption)
    reversed_ = toy_metrics.object_measures(frames[::-1].copy(), clip.caption)
    shuffled = toy_metrics.object_measures(frames[[0, 5, 2, 7, 1, 6, 3, 4]], clip.caption)
    assert good["direction_agreement"] == 1.0 and reversed_["direction_agreement"] == 0.0
    assert shuffled["centroid_jerk"] > good["centroid_jerk"] + 2.0
    empty = toy_metrics.object_measures(np.zeros_like(frames), clip.caption)
    assert empty["presence"] == 0.0 and empty["size_drift"] is None
    with pytest.raises(ValueError, match="colour"):
        toy_metrics.object_measures(frames, "a cat on a mat")


def test_flow_measures_inside_the_object_mask():
    from mp_plugin_tvl1 import load

    flow = load(None, "cpu")
    seed = next(s for s in range(100) if toyworld.sample_scene(s).motion == "right"
                and toyworld.sample_scene(s).background == "plain")
    clip = toyworld.make_clip(seed)
    true_speed = float((clip.centers[0, 1:] - clip.centers[0, :-1]).norm(dim=1).mean())
    row = toy_metrics.object_measures(clip.uint8(), clip.caption, flow)
    assert abs(row["object_speed"] - true_speed) < 0.35 * true_speed
    assert row["flow_spread"] < 0.5 * true_speed


def test_fidelity_labels_and_classifier_outputs():
    clip = toyworld.make_clip(3)
    labels = toy_metrics.clip_labels(clip.caption)
    assert toy_metrics.ATTRIBUTES["shape"][labels["shape"]] == clip.scene.objects[0].shape
    model = toy_metrics.train_classifier(0, clips=8, epochs=1, batch=4)
    out = toy_metrics.fidelity(model, clip.uint8(), clip.caption)
    assert set(out) == {"fidelity", "fidelity_shape", "fidelity_motion", "fidelity_background"}
    assert out["fidelity"] == pytest.approx(np.mean([out["fidelity_shape"], out["fidelity_motion"], out["fidelity_background"]]))
