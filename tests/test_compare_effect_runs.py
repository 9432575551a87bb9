"""benchmarks/compare_effect_runs.py: two bench_effect arms paired by (prompt, seed) file name, B - A."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_effect_runs  # noqa: E402


def _run(folder: str, offset: float) -> dict:
    videos = {f"/w/{folder}/guided/p{p:04d}_s{s:04d}.mp4": {"flow_warp_error": 1.0 + p + s + offset}
              for p in range(4) for s in range(2)}
    return {"per_video": {"guided": videos}, "overrides": []}


def test_arms_pair_by_prompt_and_seed_and_give_b_minus_a(tmp_path):
    a, b = _run("a", 0.0), _run("b", -0.5)
    del b["per_video"]["guided"]["/w/b/guided/p0003_s0001.mp4"]  # unpaired: left out
    result = compare_effect_runs.compare(a, b, "guided", "guided", resamples=200)
    row = result["metrics"]["flow_warp_error"]
    assert row["n"] == 7 and abs(row["diff"] + 0.5) < 1e-9 and row["ci"][1] < 0
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = CliRunner().invoke(compare_effect_runs.main, [str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--tag", "t",
                                                        "--out", str(tmp_path), "--resamples", "200"])
    assert out.exit_code == 0, out.output
    assert "(7 paired videos)" in (tmp_path / "compare_t.md").read_text()
