"""Two CPU processes (torchrun, gloo) on the tiny backbone: `mpcore generate`, `mpcore disc train`
and `mpcore flows extract` give what one process gives.

Each multi-process run is a real launcher in a subprocess (``python -m torch.distributed.run
--standalone``: a free rendezvous port per run); the single-process references run in-process.
Everything uses one thread per process, so the float math is the same in both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mpcore import plugins
from mpcore.jobs import distributed
from mpcore.cli.main import build_cli
from mpcore.flows.cache import FlowCache, FlowCacheWriter, VideoEntry
from mpcore.jobs.generate import EXIT_AFTER_ENV

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

TINY = ["--backbone", "animatediff", "--model", "tiny", "--frames", "2", "--steps", "2", "--height", "32",
        "--width", "32", "--guidance", "none", "--no-progress"]
PROMPTS = ["a fox", "a boat", "a red car"]
SEEDS = "0-1"  # 3 prompts x 2 seeds = 6 items: 3 per process
TIMEOUT = 300


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    distributed.reset()
    yield
    torch.set_num_threads(threads)


def invoke(args):
    plugins.load_plugins(reload=True)
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 0, result.output
    return result


def launch(args: list[str], nproc: int = 2, env: dict[str, str] | None = None, check: bool = True):
    """``torchrun --standalone --nproc-per-node NPROC -m mpcore ARGS`` on the CPU (gloo)."""
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        environ.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "mpcore", *args]
    result = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=TIMEOUT)
    if check:
        assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr[-4000:]}"
    return result


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


# ---------------------------------------------------------------------------------------------------
# generate


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def single(prompts_file, tmp_path_factory):
    """The single-process reference run (in-process)."""
    out = tmp_path_factory.mktemp("single")
    invoke(["generate", *TINY, "--prompts", str(prompts_file), "--seeds", SEEDS, "--out", str(out)])
    return out


def videos(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.mp4"))}


def test_two_processes_generate_each_item_once_identical_to_one_process(single, prompts_file, tmp_path):
    out = tmp_path / "two"
    result = launch(["generate", *TINY, "--prompts", str(prompts_file), "--seeds", SEEDS, "--out", str(out)])
    summary = json.loads((out / "generate.json").read_text())
    items = summary["items"]
    assert len(items) == 6 and all(item["status"] == "generated" for item in items)
    by_rank = {rank: [item["name"] for item in items if item["rank"] == rank] for rank in (0, 1)}
    assert len(by_rank[0]) == len(by_rank[1]) == 3  # dealt round-robin: each item on exactly one process
    assert sorted(by_rank[0] + by_rank[1]) == sorted(item["name"] for item in items)
    ranks = summary["distributed"]["ranks"]
    assert summary["distributed"]["processes"] == 2 and [row["rank"] for row in ranks] == [0, 1]
    assert all(row["generated"] == 3 and row["items_per_s"] > 0 for row in ranks)
    assert summary["summary"]["generated"] == 6
    assert summary["settings"] == json.loads((single / "generate.json").read_text())["settings"]
    assert videos(out) == videos(single)  # byte-identical mp4s
    assert leftovers(out) == []  # the part files were merged and removed
    assert result.stderr.count("rank 0 (") == 1 and result.stderr.count("rank 1 (") == 1  # one summary, by main


def test_a_killed_run_resumes_without_duplicates(single, prompts_file, tmp_path):
    out = tmp_path / "killed"
    args = ["generate", *TINY, "--prompts", str(prompts_file), "--seeds", SEEDS, "--out", str(out)]
    killed = launch(args, env={EXIT_AFTER_ENV: "1:1"}, check=False)  # rank 1 dies after its first item
    assert killed.returncode != 0
    done = {p.stem: p.stat().st_mtime_ns for p in out.glob("p*.json")}
    assert 1 <= len(done) < 6, done
    assert all((out / f"{name}.mp4").is_file() for name in done)

    launch(args)
    summary = json.loads((out / "generate.json").read_text())
    status = {item["name"]: item["status"] for item in summary["items"]}
    assert {name for name, s in status.items() if s == "skipped"} == set(done)
    assert {name for name, s in status.items() if s == "generated"} == set(status) - set(done)
    assert {p.stem: p.stat().st_mtime_ns for p in out.glob("p*.json") if p.stem in done} == done  # not redone
    assert videos(out) == videos(single)
    assert leftovers(out) == []


# ---------------------------------------------------------------------------------------------------
# disc train


def make_cache(path: Path, kind: str, videos: int, pairs: int, seed: int, size: int = 16) -> Path:
    generator = torch.Generator().manual_seed(seed)
    with FlowCacheWriter(path, {"label": kind, "size": [size, size]}) as writer:
        for v in range(videos):
            if kind == "real":
                shifts = (torch.rand(pairs, 2, 1, 1, generator=generator) - 0.5) * 8
                flows = shifts.expand(pairs, 2, size, size) + 0.1 * torch.randn(pairs, 2, size, size, generator=generator)
            else:
                flows = torch.randn(pairs, 2, size, size, generator=generator) * 4
            writer.add(VideoEntry(f"{kind}{v:02d}", f"/videos/{kind}{v:02d}.mp4", frames=16), flows,
                       list(range(pairs)), [i + 1 for i in range(pairs)])
    return path


DISC = ["--arch", "preset=tiny", "--arch", "flow_scale=1", "--no-pretrained", "--batch-size", "17", "--lr", "0.01",
        "--no-progress"]
"""52 training pairs (24 real + 28 fake) in global batches of 17 over 2 processes: shares of 9 and 8,
and a last batch of 1 pair, whose empty share on rank 1 runs the zero-weight stand-in."""


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_ddp_discriminator_training_matches_one_process_and_writes_once(tmp_path):
    real = make_cache(tmp_path / "real", "real", videos=5, pairs=6, seed=0)
    fake = make_cache(tmp_path / "fake", "fake", videos=5, pairs=7, seed=1)
    data = ["--real", str(real), "--fake", str(fake)]
    one = tmp_path / "one" / "disc.safetensors"
    invoke(["disc", "train", *data, "--out", str(one), *DISC, "--epochs", "2"])

    two = tmp_path / "two" / "disc.safetensors"
    first = launch(["disc", "train", *data, "--out", str(two), *DISC, "--epochs", "1"])
    assert first.stderr.count("epoch 1/1") == 1 and first.stdout.count("best epoch") == 1  # main process only
    assert sorted(p.name for p in two.parent.iterdir()) == sorted(
        ["disc.safetensors", "disc.json", "disc_log.json", "disc_curves.png", "disc.ckpt.pt"])
    log = json.loads((two.parent / "disc_log.json").read_text())
    assert log["data"]["class_balance"]["train"]["pairs"] == 52
    assert log["distributed"]["processes"] == 2 and log["distributed"]["global_batch_size"] == 17
    assert [s["processes"] for s in log["sessions"]] == [2]

    launch(["disc", "train", *data, "--out", str(two), *DISC, "--epochs", "2", "--resume"])  # resume on 2 processes
    log = json.loads((two.parent / "disc_log.json").read_text())
    reference = json.loads((one.parent / "disc_log.json").read_text())
    assert [row["epoch"] for row in log["epochs"]] == [1, 2] and len(log["sessions"]) == 2
    assert log["data"]["split"] == reference["data"]["split"]
    for row, ref in zip(log["epochs"], reference["epochs"]):  # the same run up to float summation order
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auc"):
            assert row[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-5), key
    got, want = weights(two), weights(one)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)
    checkpoint = torch.load(two.parent / "disc.ckpt.pt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 2 and not any(k.startswith("module.") for k in checkpoint["model"])


# ---------------------------------------------------------------------------------------------------
# flows extract


def moving_frames(num_frames: int, step: int, seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(size, size + 4 * num_frames, 3), dtype=np.uint8)
    return np.stack([base[:, f * step:f * step + size] for f in range(num_frames)])


def test_two_processes_extract_a_cache_that_reads_back_as_one_process(tmp_path):
    root = tmp_path / "videos"
    for v in range(5):  # 5 videos: blocks of 3 and 2, with an unusable one in each half
        folder = root / f"clip{v}"
        folder.mkdir(parents=True)
        for i, frame in enumerate(moving_frames(5, 1 + v % 3, seed=v)):
            Image.fromarray(frame).save(folder / f"{i:05d}.png")
    (root / "a_empty").mkdir()
    (root / "clip9").mkdir()
    Image.fromarray(moving_frames(1, 1, seed=9)[0]).save(root / "clip9" / "00000.png")  # too short
    args = ["flows", "extract", "--videos", str(root), "-e", "tvl1", "--option", "iterations=5", "--option", "warps=2",
            "--size", "16", "--pairs-per-video", "3", "--gap", "1-2", "--batch-size", "2", "--no-progress"]
    invoke([*args, "--out", str(tmp_path / "one")])
    launch([*args, "--out", str(tmp_path / "two")])

    one, two = FlowCache(tmp_path / "one"), FlowCache(tmp_path / "two")
    assert [vars(v) for v in two.videos] == [vars(v) for v in one.videos] and len(one.videos) == 5
    assert two.pairs() == one.pairs()
    assert torch.equal(two.video_index, one.video_index)
    assert torch.equal(two.flows(), one.flows())
    assert two.index["skipped"] == one.index["skipped"] and len(one.index["skipped"]) == 2
    assert two.index["summary"]["processes"] == 2 and len(two.index["summary"]["ranks"]) == 2
    assert {s["file"].split("-")[1] for s in two.index["shards"]} == {"r00000", "r00001"}  # each rank wrote its shards
    assert leftovers(tmp_path) == []
