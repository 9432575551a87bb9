"""The flow cache: written atomically, read back exactly, clear errors for what is not a cache."""

from __future__ import annotations

import json

import pytest
import torch

from mpcore.flows.cache import FlowCache, FlowCacheError, FlowCacheWriter, VideoEntry


def test_round_trip_across_shards(tmp_path):
    out = tmp_path / "cache"
    flows = {name: torch.randn(k, 2, 8, 12) * 5 for name, k in (("a", 3), ("b", 2), ("c", 4))}
    with FlowCacheWriter(out, {"size": [8, 12], "label": "real"}, shard_size=4) as writer:
        for name, flow in flows.items():
            writer.add(VideoEntry(name, f"/videos/{name}.mp4", frames=16), flow, list(range(len(flow))), [i + 2 for i in range(len(flow))])
        writer.skip("/videos/broken.mp4", "unreadable")
        assert not out.exists()  # nothing under the final name before close
    cache = FlowCache(out)
    assert len(cache) == 9 and cache.size == (8, 12)
    assert [v.id for v in cache.videos] == ["a", "b", "c"] and [v.pairs for v in cache.videos] == [3, 2, 4]
    assert cache.video_index.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    expected = torch.cat(list(flows.values())).half().float()
    torch.testing.assert_close(cache.flows(), expected)
    torch.testing.assert_close(cache.flows([8, 0, 4]), expected[[8, 0, 4]])
    assert cache.pairs()[4] == {"video": "b", "frame_a": 1, "frame_b": 3}
    index = json.loads((out / "index.json").read_text())
    assert index["label"] == "real" and index["skipped"] == [{"source": "/videos/broken.mp4", "reason": "unreadable"}]
    assert [s["count"] for s in index["shards"]] == [5, 4]  # flushed once 4 or more are pending
    assert not list(tmp_path.glob(".cache.tmp-*"))


def test_failure_leaves_nothing(tmp_path):
    out = tmp_path / "cache"
    with pytest.raises(RuntimeError):
        with FlowCacheWriter(out, {}) as writer:
            writer.add(VideoEntry("a", "a.mp4", 8), torch.zeros(1, 2, 4, 4), [0], [1])
            raise RuntimeError("killed")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_errors(tmp_path):
    with pytest.raises(FlowCacheError, match="not a flow cache.*mpcore flows extract"):
        FlowCache(tmp_path)
    (tmp_path / "done").mkdir()
    with pytest.raises(FlowCacheError, match="already exists"):
        FlowCacheWriter(tmp_path / "done", {})
    with FlowCacheWriter(tmp_path / "c", {}) as writer:
        writer.add(VideoEntry("a", "a.mp4", 8), torch.zeros(1, 2, 4, 4), [0], [1])
        with pytest.raises(ValueError, match="already in the cache"):
            writer.add(VideoEntry("a", "a.mp4", 8), torch.zeros(1, 2, 4, 4), [0], [1])
        with pytest.raises(ValueError, match=r"\(k, 2, H, W\)"):
            writer.add(VideoEntry("b", "b.mp4", 8), torch.zeros(1, 3, 4, 4), [0], [1])
    with pytest.raises(IndexError):
        FlowCache(tmp_path / "c").flows([5])


def test_a_finished_cache_removes_what_killed_runs_left(tmp_path):
    stale = tmp_path / ".cache.tmp-999999"  # a killed `flows extract` (SIGKILL skips its cleanup)
    stale.mkdir()
    (stale / "shard-00000.safetensors").write_bytes(b"half")
    stale_parts = tmp_path / ".cache.tmp-999998-2p"  # a killed multi-process one
    stale_parts.mkdir()
    other = tmp_path / ".other.tmp-999999"  # another output's: left alone
    other.mkdir()
    with FlowCacheWriter(tmp_path / "cache", {"label": "real"}) as writer:
        writer.add(VideoEntry("v0", "/v0.mp4", frames=4), torch.zeros(2, 2, 8, 8), [0, 1], [1, 2])
    assert len(FlowCache(tmp_path / "cache")) == 2
    assert not stale.exists() and not stale_parts.exists() and other.exists()
