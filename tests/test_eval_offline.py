"""``mpcore eval`` without network (issue 29): no download attempt, no library log lines, short warnings, one
line per unavailable metric; default weights found in the local caches are used without any request."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mpcore.cli.main import build_cli
from mpcore.io.video import write_video

pytest.importorskip("mp_plugin_vbench")
from mp_plugin_vbench import hub, metrics  # noqa: E402

HUB_METRICS = ("subject_consistency", "background_consistency", "dynamic_degree")

# runs `mpcore` with every network access recorded on stderr and refused
GUARDED_MPCORE = """
import socket, sys

def refuse(what):
    def guard(*args, **kwargs):
        sys.stderr.write(f"NETWORK-ATTEMPT {what} {args[:2]!r}\\n")
        raise OSError(f"network access in a test: {what}")
    return guard

socket.socket.connect = refuse("connect")
socket.socket.connect_ex = refuse("connect_ex")
socket.getaddrinfo = refuse("getaddrinfo")
socket.create_connection = refuse("create_connection")
from mpcore.cli.main import main
sys.argv[0] = "mpcore"
main()
"""


def _videos(folder: Path, count: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for index in range(count):
        write_video(rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), folder / f"v{index}.mp4")
    return folder


def test_offline_eval_prints_one_short_line_per_unavailable_metric_and_tries_no_network(tmp_path):
    """HF_HUB_OFFLINE=1 and empty caches: every metric runs or is unavailable in one line (< 120 characters),
    no `Downloading: https://...`, no `ERROR:root:` from open_clip, no socket opened; the JSON lists them."""
    videos = _videos(tmp_path / "videos")
    env = {key: value for key, value in os.environ.items() if "PROXY" not in key.upper()}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"),
               OMP_NUM_THREADS="1")
    out = tmp_path / "eval.json"
    run = subprocess.run([sys.executable, "-c", GUARDED_MPCORE, "eval", str(videos), "--json", str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "NETWORK-ATTEMPT" not in run.stderr
    assert "Downloading" not in run.stderr and "ERROR:root" not in run.stderr and "Traceback" not in run.stderr
    lines = [line for line in run.stderr.replace("\r", "\n").splitlines() if line.strip()]
    too_long = [line for line in lines if len(line) >= 120]
    assert not too_long, too_long
    for name in HUB_METRICS:
        said = [line for line in lines if f"metric {name} is unavailable" in line]
        assert len(said) == 1 and "HF_HUB_OFFLINE=1" in said[0], lines
    assert sum("is unavailable" in line for line in lines) == len(HUB_METRICS)
    data = json.loads(out.read_text())
    assert set(data["unavailable"]) == set(HUB_METRICS)
    assert data["mean"]["temporal_flickering"] is not None and len(data["videos"]) == 2


@pytest.fixture
def no_network(monkeypatch):
    """Every name lookup and connection is recorded and refused; the reachability probe starts afresh."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(str(args[0] if args else kwargs.get("host")))
        raise socket.gaierror(socket.EAI_NONAME, "no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    monkeypatch.setattr(hub, "_reachable", {})
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return attempts


def test_unreachable_hosts_are_probed_once_and_nothing_is_downloaded(tmp_path, monkeypatch, no_network):
    """Without HF_HUB_OFFLINE and without network: one quick probe per host (not the hub client's five
    retries per file, not torchvision's download), and the metrics say which host was unreachable."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hub, "hf_cached", lambda repo, files: None)  # whatever this machine's hub cache holds
    videos = _videos(tmp_path / "videos")
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(build_cli(), ["eval", str(videos), "--no-progress", "--json", str(out), "--metrics",
                                              "temporal_flickering," + ",".join(HUB_METRICS)])
    assert result.exit_code == 0, result.output
    assert sorted(no_network) == ["download.pytorch.org", "huggingface.co"], no_network
    unavailable = json.loads(out.read_text())["unavailable"]
    assert unavailable["subject_consistency"] == "huggingface.co unreachable and no cached DINO ViT-B/16 weights"
    assert unavailable["dynamic_degree"].startswith("download.pytorch.org unreachable")
    assert "Downloading" not in result.output
    assert all(len(line) < 120 for line in result.stderr.splitlines())


def _hub_cache_file(cache: Path, repo: str, filename: str) -> Path:
    """``filename`` of ``repo`` laid out as the Hugging Face hub client caches it (refs/main -> snapshot)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    path = folder / "snapshots" / ("0" * 40) / filename
    path.parent.mkdir(parents=True)
    return path


def test_cached_default_weights_load_without_any_request(tmp_path, monkeypatch, no_network):
    """The hub's and torch.hub's cached files are loaded from their paths: no lookup, no connection."""
    import huggingface_hub.constants
    import timm
    from safetensors.torch import save_file
    from torchvision.models.optical_flow import Raft_Large_Weights, raft_large

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(0)
    arch = "vit_tiny_patch16_224"
    repo = timm.models.get_pretrained_cfg(arch).hf_hub_id
    vit = timm.create_model(arch, pretrained=False, num_classes=0)
    save_file(vit.state_dict(), _hub_cache_file(tmp_path / "hub", repo, "model.safetensors"))
    score = metrics.load_subject_consistency(None, "cpu", arch=arch)
    frames = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert 0.0 <= score(frames) <= 1.0

    raft_file = hub.torch_hub_file(Raft_Large_Weights.C_T_V1.url)
    raft_file.parent.mkdir(parents=True)
    torch.save(raft_large(weights=None).state_dict(), raft_file)
    assert metrics.load_dynamic_degree(None, "cpu", num_flow_updates=1)(frames, fps=8.0) in (0.0, 1.0)
    assert no_network == []


def test_open_clip_logging_is_kept_out_and_restored(monkeypatch, capfd):
    """open_clip reports a failed download with logging.error on the root logger, which would also install a
    root stderr handler (basicConfig) for the rest of the process: neither happens, and logging is as before."""
    import open_clip

    def failing_create_model(*args, **kwargs):
        logging.error("Failed to download weights for tag 'openai': a very long library message ...")
        raise RuntimeError("Failed to download weights for tag 'openai'")

    monkeypatch.setattr(open_clip, "create_model", failing_create_model)
    monkeypatch.setattr(hub, "open_clip_hub_file", lambda arch, tag: ("timm/clip", None))
    monkeypatch.setattr(hub, "offline_reason", lambda host: None)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a plain `mpcore eval` process (pytest adds its own)
    filters = list(root.filters)
    with pytest.raises(metrics.MetricUnavailable, match="cannot load CLIP ViT-B-32 .openai. weights from the hub"):
        metrics.load_background_consistency(None, "cpu")
    assert root.handlers == [] and root.filters == filters
    captured = capfd.readouterr()
    assert "ERROR:root" not in captured.err and "Failed to download" not in captured.err
