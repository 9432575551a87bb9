"""`mpcore report`: the HTML page of an output folder, checked as text and rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mpcore.analysis.report import _comparison_rows
from mpcore.cli.report import report
from mpcore.io.video import side_by_side, write_video

EVIL = '<script>alert("x")</script> & a "fox"'
CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed: Debian package `chromium` (apt-get install -y chromium)")


def _frames(seed: int, frames: int = 4, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)


def _manifest(name: str, prompt: str, seed: int, guidance: str = "motionprompt") -> dict:
    manifest = {
        "mpcore_manifest_version": 1, "prompt": prompt, "seed": seed, "guidance": guidance,
        "backbone": {"name": "animatediff", "model": "tiny"},
        "sampler": {"steps": 3, "cfg_scale": 7.5, "frames": 4, "height": 32, "width": 32, "seed": seed},
        "motionprompt": {"opt_range": [0, 1], "lr": 0.005, "iterations": 3, "optimizer": "adam", "flow_estimator": "tvl1"},
        "flow": {"name": "tvl1", "weights": None},
        "discriminator": {"name": "vit", "source": "random (seed 0)"},
        "outputs": {"video": f"/elsewhere/{name}.mp4"},  # absolute paths of the machine that ran it
        "warnings": ["--model tiny is a random-init model: the video is noise"],
    }
    if guidance != "none":
        manifest["result"] = {"final_cosine": [0.8712], "token_drift_l2": [0.0553], "skipped_updates": 0}
    return manifest


@pytest.fixture
def folder(tmp_path):
    """Three items: full (compare + trace), video-only manifest item, and a video without manifest;
    plus an eval JSON (with an unavailable metric) and a comparison folder."""
    from PIL import Image

    out = tmp_path / "run"
    out.mkdir()
    write_video(_frames(0), out / "p0000_s0000.mp4")
    write_video(side_by_side(_frames(1), _frames(0)), out / "p0000_s0000_compare.mp4")
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(out / "p0000_s0000_trace.png")
    (out / "p0000_s0000.json").write_text(json.dumps(_manifest("p0000_s0000", EVIL, 0)))
    write_video(_frames(2), out / "p0001_s0001.mp4")
    (out / "p0001_s0001.json").write_text(json.dumps(_manifest("p0001_s0001", "a heron in reeds", 1, "none")))
    write_video(_frames(3), out / "p0002_s0000.mp4")  # manifest missing
    (out / "notes.json").write_text('{"not": "a manifest"}')

    evaluation = {
        "videos": {str(out / "p0000_s0000.mp4"): {"temporal_flickering": 0.9512, "subject_consistency": None},
                   "elsewhere/p0001_s0001.mp4": {"temporal_flickering": 0.8123, "subject_consistency": None}},
        "mean": {"temporal_flickering": 0.88175, "subject_consistency": None},
        "unavailable": {"subject_consistency": "DINO weights missing: pass a local path"},
        "errors": {"elsewhere/p0001_s0001.mp4": {"dynamic_degree": "RAFT failed: too few frames"}},
        "metrics": {"temporal_flickering": {"vbench": True, "description": "1 - mean abs frame difference"},
                    "subject_consistency": {"vbench": True, "description": "DINO cosine"},
                    "dynamic_degree": {"vbench": True, "description": "RAFT magnitude"}},
    }
    evaluation["videos"][str(out / "p0000_s0000.mp4")]["dynamic_degree"] = 1.0
    evaluation["videos"]["elsewhere/p0001_s0001.mp4"]["dynamic_degree"] = None
    evaluation["mean"]["dynamic_degree"] = 1.0
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    comparison = out / "comparison"
    comparison.mkdir()
    (comparison / "comparison.json").write_text(json.dumps({
        "seed": 0, "resamples": 10000, "confidence": 0.95, "pairs": [["b/a.mp4", "g/a.mp4"], ["b/b.mp4", "g/b.mp4"]],
        "metrics": {"temporal_flickering": {"n": 2, "baseline": 0.85, "guided": 0.88175, "diff": 0.03175,
                                            "ci": [0.01, 0.05], "win_rate": 0.5, "description": "flicker"},
                    "dynamic_degree": {"n": 2, "baseline": 0.5, "guided": 0.75, "diff": 0.25,
                                       "ci": [0.0, 0.5], "win_rate": 0.5, "vbench": True}},
        "unavailable": {"subject_consistency": "guided: DINO weights missing"},
        "notes": ["diff = guided - baseline"]}))
    Image.fromarray(np.full((30, 50, 3), 120, np.uint8)).save(comparison / "comparison.png")
    return out


def _run_report(args):
    return CliRunner().invoke(report, [str(a) for a in args])


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("src", "href") and value and not value.startswith("#"):
                self.links.append(value)


def _links(page: str) -> list[str]:
    parser = Links()
    parser.feed(page)
    return parser.links


def test_report_page_escapes_links_relatively_and_shows_metrics(folder, tmp_path):
    result = _run_report([folder, "--eval", tmp_path / "eval.json", "--title", "Fox <b>report</b>"])
    assert result.exit_code == 0, result.output
    page_path = folder / "report.html"
    assert result.output.splitlines() == [str(page_path), page_path.resolve().as_uri()]
    page = page_path.read_text(encoding="utf-8")

    # the prompt and title are text, never markup
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; a &quot;fox&quot;" in page
    assert "Fox &lt;b&gt;report&lt;/b&gt;" in page
    assert page.count('<section class="card"') == 3
    assert re.findall(r'data-item="([^"]+)"', page) == ["p0000_s0000", "p0001_s0001", "p0002_s0000"]

    # media: relative links that resolve from the page's folder; the compare video where there is one
    links = _links(page)
    assert links and not any(link.startswith(("/", "file:", "http")) for link in links)
    assert all((folder / link).exists() for link in links), links
    assert '<video class="pixel" controls loop muted autoplay playsinline src="p0000_s0000_compare.mp4">' in page
    assert 'src="p0001_s0001.mp4"' in page  # no compare file: the single video
    assert 'src="p0000_s0000_trace.png"' in page
    assert 'src="comparison/comparison.png"' in page
    assert "no manifest (p0002_s0000.json)" in page
    assert "no trace plot" not in page.split('data-item="p0001_s0001"')[1].split("</section>")[0]  # baseline: none expected

    # settings and eval values, matched by path and by file name; null -> unavailable with the reason
    assert "random (seed 0)" in page and "[0.871]" in page and "tvl1" in page
    assert '<td class="num" data-metric="temporal_flickering">0.9512</td>' in page
    assert '<td class="num" data-metric="temporal_flickering">0.8123</td>' in page
    assert '<td class="num" data-metric="temporal_flickering">0.8818</td>' in page  # mean
    assert page.count('title="DINO weights missing: pass a local path">unavailable</td>') == 3  # mean + 2 cards

    # comparison table, generic over its rows and columns
    assert '<tr data-metric="temporal_flickering"><th title="flicker">temporal_flickering</th>' in page
    assert '<tr data-metric="dynamic_degree">' in page
    assert "[0.0100, 0.0500]" in page and "win_rate" in page and "pairs: 2" in page
    assert "subject_consistency unavailable: guided: DINO weights missing" in page
    assert "diff = guided - baseline" in page
    # a per-video error is the reason shown for that video's missing value
    assert 'title="RAFT failed: too few frames">unavailable</td>' in page
    assert 'title="1 - mean abs frame difference (VBench definition)">temporal_flickering</th>' in page


def test_report_survives_moving_the_folder(folder, tmp_path):
    assert _run_report([folder]).exit_code == 0
    moved = shutil.move(str(folder), str(tmp_path / "zipped" / "elsewhere"))
    page = (Path(moved) / "report.html").read_text(encoding="utf-8")
    assert all((Path(moved) / link).exists() for link in _links(page))


def test_report_without_manifest_is_a_clear_error(tmp_path):
    write_video(_frames(0), tmp_path / "clip.mp4")
    result = _run_report([tmp_path])
    assert result.exit_code != 0
    assert "holds no mpcore run manifest" in result.output and "mpcore generate" in result.output
    assert not (tmp_path / "report.html").exists()


def test_report_out_elsewhere_and_missing_pieces(folder, tmp_path):
    (folder / "p0000_s0000_trace.png").unlink()
    (folder / "p0000_s0000_compare.mp4").unlink()
    (folder / "p0001_s0001.json").write_text("{broken")
    out = tmp_path / "pages" / "r.html"
    result = _run_report([folder, "--out", out])
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert 'src="../run/p0000_s0000.mp4"' in page
    assert "no trace plot" in page and "video (no side-by-side compare file)" in page
    assert "p0001_s0001.json is not readable JSON" in page
    assert all((out.parent / link).exists() for link in _links(page))


def test_report_labels_come_from_the_manifests_guidance_name(tmp_path):
    """Issue 29: a FlowMo folder's page said "baseline | MotionPrompt" and "Baseline vs MotionPrompt"."""
    from PIL import Image

    write_video(_frames(0), tmp_path / "fox.mp4")
    write_video(side_by_side(_frames(1), _frames(0)), tmp_path / "fox_compare.mp4")
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(tmp_path / "fox_trace.png")
    manifest = {**_manifest("fox", "a fox", 0, "flowmo"), "motionprompt": None, "flow": None, "discriminator": None,
                "guidance_settings": {"opt_range": None, "lr": 0.001, "iterations": 1, "step_rule": "adam"},
                "result": {"opt_range": [0, 2], "skipped_updates": 0, "trace": []},
                "guidance_updates": {"updates": 2, "skipped": 0, "skip_reasons": {}, "all_skipped": False}}
    (tmp_path / "fox.json").write_text(json.dumps(manifest))
    (tmp_path / "comparison").mkdir()
    (tmp_path / "comparison" / "comparison.json").write_text(json.dumps({"metrics": {"m": {"diff": 1.0}}}))
    assert _run_report([tmp_path]).exit_code == 0
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "baseline | flowmo (same seed)" in page and "Baseline vs flowmo" in page and "flowmo: loss terms" in page
    assert "MotionPrompt" not in page and "no trace plot" not in page
    assert "[0, 2] of 3 steps" in page  # its resolved range from the result: the settings say none
    assert "2 updates, 0 skipped" in page and "<th>discriminator</th>" not in page


@pytest.mark.parametrize("data", [
    {"metrics": {"m": {"diff": 1.0}}},
    {"m": {"diff": 1.0}, "n_pairs": 3},
    {"rows": [{"metric": "m", "diff": 1.0}]},
    [{"name": "m", "diff": 1.0}],
])
def test_comparison_rows_accept_several_layouts(data):
    rows, _ = _comparison_rows(data)
    assert rows == [("m", {"diff": 1.0})]


def _dump_dom(page: Path, tmp_path: Path) -> str:
    profile = tmp_path / "chromium-profile"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--autoplay-policy=no-user-gesture-required",
               "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Dom(HTMLParser):
    """Tags with their attributes, and the text of every <td>."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.cells: list[tuple[dict, str]] = []
        self._cell: dict | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "td":
            self._cell = dict(attrs)
            self.cells.append((self._cell, ""))

    def handle_data(self, data):
        if self._cell is not None:
            attrs, text = self.cells[-1]
            self.cells[-1] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None


@needs_chromium
def test_report_renders_and_plays_in_headless_chromium(folder, tmp_path):
    assert _run_report([folder, "--eval", tmp_path / "eval.json"]).exit_code == 0
    dom_text = _dump_dom(folder / "report.html", tmp_path)
    dom = Dom()
    dom.feed(dom_text)
    body = next(attrs for tag, attrs in dom.tags if tag == "body")
    cards = [attrs for tag, attrs in dom.tags if tag == "section" and attrs.get("class") == "card"]
    videos = [attrs for tag, attrs in dom.tags if tag == "video"]
    tables = [attrs.get("class") for tag, attrs in dom.tags if tag == "table"]
    assert len(cards) == 3
    assert [v["src"] for v in videos] == ["p0000_s0000_compare.mp4", "p0001_s0001.mp4", "p0002_s0000.mp4"]
    # the page's script ran in the browser, and every H.264 video decoded a first frame
    assert body.get("data-videos-total") == "3"
    assert body.get("data-videos-failed") == "0", dom_text[:3000]
    assert body.get("data-videos-loaded") == "3" and body.get("data-videos-ready") == "true"
    assert [v.get("data-loaded") for v in videos] == ["68x32", "32x32", "32x32"]  # baseline | gap | guided
    assert tables.count("mean") == 1 and tables.count("cmp") == 1
    assert tables.count("settings") == 2 and tables.count("metrics") == 3
    assert [tag for tag, _ in dom.tags].count("script") == 1  # the page's own; the prompt stayed text
    assert '&lt;script&gt;alert("x")&lt;/script&gt; &amp; a "fox"' in dom_text
    values = [(attrs.get("data-metric"), text.strip()) for attrs, text in dom.cells if attrs.get("data-metric")]
    assert ("temporal_flickering", "0.9512") in values and ("temporal_flickering", "0.8123") in values
    assert ("temporal_flickering", "0.8818") in values and ("subject_consistency", "unavailable") in values
    cmp_cells = [text for attrs, text in dom.cells if attrs.get("data-col") == "diff"]
    assert cmp_cells == ["0.0318", "0.2500"]
    images = [attrs["src"] for tag, attrs in dom.tags if tag == "img"]
    assert "p0000_s0000_trace.png" in images and "comparison/comparison.png" in images


@needs_chromium
def test_report_of_a_real_tiny_run_in_chromium(tmp_path):
    """The whole path: `mpcore run --compare` on the tiny model, `mpcore report`, Chromium plays it."""
    from mpcore import plugins
    from mpcore.cli.main import build_cli

    plugins.load_plugins(reload=True)
    out = tmp_path / "clips" / "fox.mp4"
    args = ["run", "--backbone", "animatediff", "--model", "tiny", "--prompt", "a <fox> & hare", "--frames", "4",
            "--height", "32", "--width", "32", "--steps", "2", "-o", "iterations=1", "-o", "opt_range=0,1",
            "--flow-option", "iterations=2", "--flow-option", "warps=1", "--no-progress", "--compare", "--out", str(out)]
    import torch

    cli = build_cli()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32x32 model: one thread is as fast, and 5x faster on a busy machine
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["report", str(out.parent)])
    assert result.exit_code == 0, result.output
    page = (out.parent / "report.html").read_text(encoding="utf-8")
    assert "a &lt;fox&gt; &amp; hare" in page and 'src="fox_compare.mp4"' in page and 'src="fox_trace.png"' in page
    dom = Dom()
    dom.feed(_dump_dom(out.parent / "report.html", tmp_path))
    body = next(attrs for tag, attrs in dom.tags if tag == "body")
    assert body.get("data-videos-ready") == "true" and body.get("data-videos-failed") == "0"


def test_comparison_found_beside_dir_only_when_it_pairs_dir(folder, tmp_path):
    """`mpcore eval --compare B G` writes to G/../comparison by default: used when it pairs G's videos."""
    beside = tmp_path / "comparison"
    shutil.move(str(folder / "comparison"), str(beside))
    data = json.loads((beside / "comparison.json").read_text())
    (beside / "comparison.json").write_text(json.dumps({**data, "pairs": [["base/x.mp4", "elsewhere/x.mp4"]]}))
    assert _run_report([folder]).exit_code == 0
    assert "comparison.png" not in (folder / "report.html").read_text(encoding="utf-8")
    pairs = [[str(tmp_path / "base" / "p0000_s0000.mp4"), str(folder / "p0000_s0000.mp4")]]
    (beside / "comparison.json").write_text(json.dumps({**data, "pairs": pairs}))
    assert _run_report([folder]).exit_code == 0
    assert 'src="../comparison/comparison.png"' in (folder / "report.html").read_text(encoding="utf-8")
