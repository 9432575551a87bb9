"""Flow evaluation (mpcore.flows.evaluate), its visualization (mpcore.flows.viz) and `mpcore flows`."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mpcore import hookimpl, plugins
from mpcore.flows import evaluate as flow_eval
from mpcore.flows import viz as flow_viz
from mpcore.cli.main import build_cli
from mpcore.interfaces import FlowEstimatorSpec

pytest.importorskip("skimage")
pytest.importorskip("skvideo")
pytest.importorskip("cv2")


# ---------------------------------------------------------------------------------------------------
# ground truth and metrics on hand-made data


def test_ground_truth_full_is_minus_disparity_with_inf_masked():
    disparity = np.array([[1.0, 2.0, np.inf], [4.0, np.nan, 6.0]], np.float32)
    flow, valid = flow_eval.ground_truth_flow(disparity)
    assert valid.tolist() == [[True, True, False], [True, False, True]]
    assert flow.shape == (2, 2, 3) and flow.dtype == np.float32
    assert flow[0][valid].tolist() == [-1.0, -2.0, -4.0, -6.0]
    assert np.all(flow[1] == 0) and np.all(flow[0][~valid] == 0)


def test_ground_truth_half_needs_all_four_pixels_and_halves_the_mean():
    disparity = np.arange(28, dtype=np.float32).reshape(4, 7) + 10  # odd width: last column dropped
    disparity[0, 1] = np.inf  # poisons the top-left block only
    disparity[3, 6] = np.inf  # in the dropped column: no effect
    flow, valid = flow_eval.ground_truth_flow(disparity, factor=2)
    assert flow.shape == (2, 2, 3)
    assert valid.tolist() == [[False, True, True], [True, True, True]]
    block = disparity[2:4, 2:4]  # output pixel (1, 1)
    assert flow[0, 1, 1] == pytest.approx(-block.mean() / 2)
    assert flow[0, 0, 2] == pytest.approx(-disparity[0:2, 4:6].mean() / 2)
    assert flow[0, 0, 0] == 0 and np.all(flow[1] == 0)


def test_downsample_image_is_a_rounded_block_mean():
    image = np.zeros((4, 5, 3), np.uint8)
    image[0, 0] = 255
    image[0, 1] = 1
    half = flow_eval.downsample_image(image, 2)
    assert half.shape == (2, 2, 3) and half.dtype == np.uint8
    assert half[0, 0].tolist() == [64, 64, 64]  # (255 + 1) / 4 = 64
    assert half[1, 1].tolist() == [0, 0, 0]


def test_endpoint_error_on_a_hand_made_flow():
    gt = np.zeros((2, 2, 2), np.float32)
    flow = np.zeros((2, 2, 2), np.float32)
    flow[:, 0, 0] = (3, 4)  # error 5
    flow[:, 1, 1] = (100, 0)  # error 100, but invalid
    valid = np.array([[True, True], [True, False]])
    assert flow_eval.endpoint_error(flow, gt, valid) == pytest.approx(5 / 3)
    assert flow_eval.endpoint_error(torch.from_numpy(flow)[None], gt) == pytest.approx(105 / 4)
    assert np.isnan(flow_eval.endpoint_error(flow, gt, np.zeros((2, 2), bool)))


def test_warp_error_is_zero_for_the_exact_integer_shift_and_not_for_zero_flow():
    generator = torch.Generator().manual_seed(0)
    frame_a = torch.rand(1, 3, 12, 16, generator=generator) * 2 - 1
    frame_b = torch.roll(frame_a, shifts=(1, 2), dims=(2, 3))  # frame_b(p + (2, 1)) = frame_a(p)
    flow = torch.zeros(1, 2, 12, 16)
    flow[:, 0], flow[:, 1] = 2.0, 1.0
    warped, inside = flow_eval.backward_warp(frame_b.double(), flow.double())
    assert inside.sum() == (12 - 1) * (16 - 2)  # sample points past the right/bottom edge are excluded
    assert flow_eval.warp_error(frame_a, frame_b, flow) < 1e-9
    assert flow_eval.warp_error(frame_a, frame_b, torch.zeros_like(flow)) > 10  # 0-255 units


def test_frames_round_trip_and_resizing_keeps_aspect_with_even_sizes():
    frames = np.random.default_rng(0).integers(0, 256, (2, 6, 10, 3), dtype=np.uint8)
    assert np.array_equal(flow_eval.to_uint8(flow_eval.to_model_frames(frames)), frames)
    assert flow_eval.fit_long_side(272, 640, 256) == (108, 256)  # bikes.mp4
    assert flow_eval.fit_long_side(144, 176, 256) == (210, 256)  # carphone
    with pytest.raises(ValueError, match="even"):
        flow_eval.fit_long_side(10, 10, 255)
    assert flow_eval.resize_frames(frames, (4, 8)).shape == (2, 4, 8, 3)


def test_farneback_pyramid_is_capped_by_opencv_at_32_px():
    assert flow_eval.farneback_pyramid_levels(500, 741) == 3
    assert flow_eval.farneback_pyramid_levels(250, 370) == 2
    assert flow_eval.farneback_pyramid_levels(1000, 1500, levels=5) == 4


def test_missing_dependency_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # "import cv2" now raises ImportError
    with pytest.raises(flow_eval.MissingDependencyError, match=r'opencv-python-headless.*pip install "mpcore\[flows\]"'):
        flow_eval.check_dependencies()
    with pytest.raises(flow_eval.MissingDependencyError, match="DIS and Farneback"):
        flow_eval.OpenCVFlow("dis")
    flow_eval.check_dependencies(references=False)


# ---------------------------------------------------------------------------------------------------
# real data: the sign convention of the motorcycle ground truth


def test_dis_on_the_motorcycle_beats_zero_flow_which_checks_the_gt_sign():
    pair = flow_eval.motorcycle("quarter")
    assert pair.frame_a.shape == (125, 185, 3) and pair.valid.shape == (125, 185)
    flow = flow_eval.OpenCVFlow("dis")(flow_eval.to_model_frames(pair.frame_a), flow_eval.to_model_frames(pair.frame_b))
    epe = flow_eval.endpoint_error(flow, pair.flow, pair.valid)
    zero = flow_eval.endpoint_error(np.zeros_like(pair.flow), pair.flow, pair.valid)
    flipped = flow_eval.endpoint_error(flow, -pair.flow, pair.valid)  # GT = (+disparity, 0): wrong sign
    assert epe < 0.3 * zero
    assert flipped > zero


# ---------------------------------------------------------------------------------------------------
# the CLI, on cheap estimators registered in-process


class ZeroFlow:
    def __call__(self, frame_a, frame_b):
        return flow_eval.zero_flow(frame_a, frame_b)

    def describe(self):
        return {"name": "test-zero"}


class _TestFlowPlugin:
    @hookimpl
    def register_flow_estimators(self, register):
        register(FlowEstimatorSpec(name="test-zero", load=lambda weights, device, seed=0, **options: ZeroFlow()))
        register(FlowEstimatorSpec(name="test-dis", load=lambda weights, device, seed=0, **options: flow_eval.OpenCVFlow("dis")))


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.delenv(plugins.ALLOW_ENV, raising=False)
    state = plugins.load_plugins(reload=True)
    assert plugins.register_plugin(state, _TestFlowPlugin(), "test-flows")
    yield build_cli()
    monkeypatch.undo()
    plugins.load_plugins(reload=True)


def invoke(cli, args):
    return CliRunner().invoke(cli, args)


CHEAP = ["--clip-pairs", "1", "--clip-size", "64", "--cost-repeats", "1", "--no-progress"]


def test_flows_eval_json_shape_and_zero_flow_equals_the_baseline(cli, tmp_path):
    out = tmp_path / "results" / "zero.json"
    result = invoke(cli, ["flows", "eval", "-e", "test-zero", "--json", "--out", str(out), *CHEAP])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # stdout is only the JSON; progress went to stderr
    assert json.loads(out.read_text()) == data
    assert data["estimator"] == "test-zero" and data["describe"] == {"name": "test-zero"}
    for resolution, size in (("full", [500, 741]), ("half", [250, 370])):
        item = data["motorcycle"][resolution]
        assert item["size"] == size and 0.5 < item["valid_fraction"] < 1
        assert item["epe"] == item["zero_flow_epe"] > 1
        for reference in ("dis", "farneback"):
            assert data["references"][reference][resolution]["epe"] == data["references"][reference]["motorcycle"][resolution]["epe"]
        assert data["references"]["dis"][resolution]["epe"] < 0.3 * item["zero_flow_epe"]
        assert data["epe_ratio_vs_dis"][resolution] == pytest.approx(item["epe"] / data["references"]["dis"][resolution]["epe"])
    assert data["motorcycle"]["half"]["zero_flow_epe"] == pytest.approx(data["motorcycle"]["full"]["zero_flow_epe"] / 2, rel=0.05)
    for clip in ("bikes", "carphone"):
        item = data["clips"][clip]
        assert item["pairs"] == 1 and max(item["size"]) == 64
        assert item["warp_error"] == item["zero_flow_warp_error"] > 0
        assert data["references"]["dis"]["clips"][clip]["warp_error"] < item["zero_flow_warp_error"]
    cost = data["cost_256"]
    assert cost["size"] == [256, 256] and cost["forward_s"] >= 0 and cost["differentiable"] is False
    assert cost["forward_backward_s"] is None
    assert not list(out.parent.glob(".*tmp*")), "temp files left behind"


def test_flows_eval_table_and_restricted_resolutions(cli):
    result = invoke(cli, ["flows", "eval", "-e", "test-dis", "--resolutions", "quarter", "--clip-pairs", "0",
                          "--cost-repeats", "0", "--no-references"])
    assert result.exit_code == 0, result.output
    assert "motorcycle quarter EPE px (125x185" in result.stdout and "zero flow" in result.stdout
    assert "farneback" not in result.stdout and "half" not in result.stdout


def test_flows_eval_errors_come_before_any_data_is_loaded(cli, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded")

    monkeypatch.setattr(flow_eval, "motorcycle", refuse)
    result = invoke(cli, ["flows", "eval", "-e", "sea-raft"])
    assert result.exit_code != 0
    assert "unknown flow 'sea-raft'; installed:" in result.output
    assert "raft" in result.output and "test-zero" in result.output
    result = invoke(cli, ["flows", "eval", "-e", "test-zero", "--resolutions", "half,eighth"])
    assert result.exit_code != 0 and "unknown resolution 'eighth'" in result.output
    result = invoke(cli, ["flows", "eval", "-e", "test-zero", "--option", "novalue"])
    assert result.exit_code != 0 and "expected KEY=VALUE" in result.output


def _save(path, array):
    Image.fromarray(array).save(path)
    return str(path)


@pytest.fixture
def image_pair(tmp_path):
    pair = flow_eval.motorcycle("quarter")
    return _save(tmp_path / "a.png", pair.frame_a), _save(tmp_path / "b.png", pair.frame_b)


def test_flows_show_writes_a_png_of_the_right_size(cli, tmp_path, image_pair):
    out = tmp_path / "viz" / "flow.png"
    result = invoke(cli, ["flows", "show", *image_pair, "-e", "test-dis", "--out", str(out), "--flow-only"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (185, 125)
    assert "max |flow| =" in result.stdout
    max_magnitude = float(result.stdout.split("max |flow| = ")[1].split(" px")[0])
    assert 5 < max_magnitude < 40  # quarter-resolution disparities reach ~15 px

    result = invoke(cli, ["flows", "show", *image_pair, "-e", "test-dis", "--out", str(out), "--size", "64"])
    assert result.exit_code == 0, result.output
    height, width = flow_eval.fit_long_side(125, 185, 64)
    legend = min(96, max(height, 16))
    assert Image.open(out).size == (3 * width + legend + 3 * flow_viz.GAP, max(height, legend))


def test_flows_show_errors(cli, tmp_path, image_pair):
    small = _save(tmp_path / "small.png", np.zeros((10, 12, 3), np.uint8))
    result = invoke(cli, ["flows", "show", image_pair[0], small, "-e", "test-zero", "--out", str(tmp_path / "x.png")])
    assert result.exit_code != 0 and "differ in size" in result.output and "185x125" in result.output
    result = invoke(cli, ["flows", "show", image_pair[0], str(tmp_path / "missing.png"), "-e", "test-zero",
                          "--out", str(tmp_path / "x.png")])
    assert result.exit_code != 0 and "missing.png" in result.output and "does not exist" in result.output
    result = invoke(cli, ["flows", "show", *image_pair, "-e", "nope", "--out", str(tmp_path / "x.png")])
    assert result.exit_code != 0 and "unknown flow 'nope'; installed:" in result.output
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = invoke(cli, ["flows", "show", *image_pair, "-e", "test-zero", "--out", str(blocker / "x.png")])
    assert result.exit_code != 0 and "cannot write" in result.output
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------------------------------
# visualization


def test_color_wheel_and_flow_image_follow_the_middlebury_coding():
    wheel = flow_viz.color_wheel(33)
    assert wheel.shape == (33, 33, 3) and wheel.dtype == np.uint8
    assert wheel[16, 16].tolist() == [255, 255, 255]  # no motion is white
    assert wheel[0, 0].tolist() == [255, 255, 255]  # outside the disk
    flow = torch.zeros(2, 4, 4)
    flow[0] = 1.0  # all rightward: one saturated color (red in the Baker et al. wheel)
    image = flow_viz.flow_image(flow)
    assert (image == image[0, 0]).all() and image[0, 0, 0] == 255 and image[0, 0, 1] < 30
    assert flow_viz.magnitude_stats(flow) == {"max": 1.0, "mean": 1.0}
