"""Issue 29: every output location of ``eval``, ``report`` and ``diagnose`` is checked writable before any work,
refused in one line naming it, exit 1 (the README's reliability section); ``eval`` on an empty folder still
writes its JSON."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mpcore.cli.main import build_cli
from mpcore.io.video import OutputError, check_location_writable, write_video


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder nothing can be written under: read-only (0o555), or, where that does not stop this user (root),
    a path under a regular file, which nobody can create."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    if not os.access(locked, os.W_OK):
        yield locked
    else:  # root writes anyway
        blocker = tmp_path / "file.txt"
        blocker.write_text("a file, not a folder")
        yield blocker / "sub"
    locked.chmod(0o755)


def _refused_in_one_line(result, path: Path) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    message = result.output.strip()
    assert message.count("\n") == 0, message
    assert message.startswith("Error: cannot write") and str(path) in message, message


@pytest.fixture
def recorded(monkeypatch):
    """Calls of the functions that do a command's work: none may happen before the output is checked."""
    import mpcore.analysis.evaluate
    import mpcore.cli.report
    import mpcore.jobs.setup

    calls: list[str] = []

    def record(name):
        def called(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} ran before the output was checked")
        return called

    monkeypatch.setattr(mpcore.analysis.evaluate, "evaluate_videos", record("evaluate_videos"))
    monkeypatch.setattr(mpcore.analysis.evaluate, "read_clip", record("read_clip"))
    monkeypatch.setattr(mpcore.cli.report, "write_report", record("write_report"))
    monkeypatch.setattr(mpcore.jobs.setup, "load", record("load"))
    return calls


def _video(path: Path) -> Path:
    return write_video(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), path)


def test_the_check_itself(tmp_path, unwritable):
    deep = tmp_path / "new" / "deeper" / "eval.json"
    assert check_location_writable(deep) == deep
    assert not (tmp_path / "new").exists()  # nothing is created
    assert check_location_writable(tmp_path / "diag", folder=True) == tmp_path / "diag"
    for target, folder in ((unwritable / "eval.json", False), (unwritable / "diag", True), (unwritable, True)):
        with pytest.raises(OutputError, match="cannot write"):
            check_location_writable(target, folder=folder)
    with pytest.raises(OutputError, match="it is a folder"):
        check_location_writable(tmp_path)
    (tmp_path / "taken").write_text("")
    with pytest.raises(OutputError, match="a file of that name exists"):
        check_location_writable(tmp_path / "taken", folder=True)


def test_eval_json_is_checked_before_scoring(tmp_path, unwritable, recorded):
    video = _video(tmp_path / "a.mp4")
    out = unwritable / "eval.json"
    result = CliRunner().invoke(build_cli(), ["eval", str(video), "--metrics", "temporal_flickering",
                                              "--json", str(out)])
    _refused_in_one_line(result, out)
    assert recorded == []


def test_eval_compare_outputs_are_checked_before_scoring(tmp_path, unwritable, recorded):
    for side in ("baseline", "guided"):
        _video(tmp_path / side / "p0000_s0000.mp4")
    base = ["eval", "--compare", str(tmp_path / "baseline"), str(tmp_path / "guided"),
            "--metrics", "temporal_flickering"]
    result = CliRunner().invoke(build_cli(), [*base, "--out", str(unwritable / "comparison")])
    _refused_in_one_line(result, unwritable / "comparison")
    result = CliRunner().invoke(build_cli(), [*base, "--json", str(unwritable / "cmp.json")])
    _refused_in_one_line(result, unwritable / "cmp.json")
    assert recorded == []


def test_report_out_is_checked_before_the_page_is_built(tmp_path, unwritable, recorded):
    (tmp_path / "run").mkdir()
    out = unwritable / "report.html"
    result = CliRunner().invoke(build_cli(), ["report", str(tmp_path / "run"), "--out", str(out)])
    _refused_in_one_line(result, out)
    assert recorded == []


def test_diagnose_steps_out_is_checked_before_loading(tmp_path, unwritable, recorded):
    _video(tmp_path / "real" / "clip0.mp4")
    (tmp_path / "captions.txt").write_text("a square moving right\n")
    out = unwritable / "diag"
    result = CliRunner().invoke(build_cli(), [
        "diagnose", "steps", "--model", "tiny", "--videos", str(tmp_path / "real"), "--prompts",
        str(tmp_path / "captions.txt"), "--frames", "4", "--height", "32", "--width", "32", "--steps", "4",
        "--check-steps", "1-3", "--out", str(out), "--no-progress"])
    _refused_in_one_line(result, out)
    assert recorded == []


def test_diagnose_gate_json_is_checked_before_the_manifests_are_read(tmp_path, unwritable):
    trace = {"trace": [{"step": 0, "optimized": True,
                        "iterations": [{"disc": 2.0, "skipped": False}, {"disc": 1.0, "skipped": False}]}]}
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "p0000_s0000.json").write_text(json.dumps({"guidance": "motionprompt", "result": trace}))
    out = unwritable / "gate.json"
    result = CliRunner().invoke(build_cli(), ["diagnose", "gate", str(tmp_path / "runs"), "--json", str(out)])
    _refused_in_one_line(result, out)  # no gate line printed: nothing was computed


def test_eval_on_an_empty_folder_writes_the_json_of_zero_videos(tmp_path):
    """The README: the JSON is always written, exit 1 when nothing could be scored. An empty folder is such a
    case: the JSON records zero videos (a script never reads a stale result) and the one line says why."""
    (tmp_path / "empty").mkdir()
    out = tmp_path / "eval.json"
    out.write_text('{"videos": {"stale.mp4": {}}}')
    result = CliRunner().invoke(build_cli(), ["eval", str(tmp_path / "empty"), "--json", str(out), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "nothing was scored: no videos" in result.output and str(tmp_path / "empty") in result.output
    assert "Traceback" not in result.output
    data = json.loads(out.read_text())
    assert data["videos"] == {} and data["unreadable"] == {} and data["unavailable"] == {}
    assert set(data["mean"]) == set(data["metrics"]) and all(v is None for v in data["mean"].values())

    # beside a folder with a video, an empty folder is a warning and the video is scored
    video = _video(tmp_path / "full" / "a.mp4")
    result = CliRunner().invoke(build_cli(), ["eval", str(tmp_path / "empty"), str(tmp_path / "full"), "--metrics",
                                              "temporal_flickering", "--json", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "warning: no videos" in result.stderr
    assert list(json.loads(out.read_text())["videos"]) == [str(video)]
