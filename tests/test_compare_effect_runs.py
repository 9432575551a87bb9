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


def _trace(first: float, last: float) -> dict:
    """A guided video's trace: two optimized steps whose discriminator term goes from ``first`` to ``last``."""
    steps = [{"step": 1, "optimized": True, "iterations": [{"disc": first}, {"disc": first}]},
             {"step": 2, "optimized": True, "iterations": [{"disc": last}, {"disc": last}]}]
    return {"trace": steps}


def _variant_run(tmp_path: Path, folder: str, drop: float, shift: float) -> dict:
    """Four videos with manifests on disk, each dropping the term by ``drop`` (+ video noise), measure + ``shift``."""
    videos = {}
    for p in range(4):
        path = tmp_path / folder / f"p{p:04d}_s0000.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        noise = 0.1 * (p % 2)
        path.with_suffix(".json").write_text(json.dumps({"result": _trace(2.0, 2.0 - drop - noise)}))
        videos[str(path)] = {"flow_warp_error": 1.0 + 0.3 * p + shift + 0.01 * (p % 3)}
    return {"per_video": {"guided": videos}}


def test_the_variant_rule_keeps_only_an_equal_drop_and_equal_measures(tmp_path):
    """Issue 31: a cheaper variant is kept iff its discriminator-term drop over the range is within 10% of the
    exact method's and no measure differs; a variant that optimizes less, or changes a measure, is not."""
    exact = _variant_run(tmp_path, "exact", 1.0, 0.0)
    drops = compare_effect_runs.range_drops(exact, "guided")
    assert sorted(round(v, 6) for v in drops.values()) == [1.0, 1.0, 1.1, 1.1]

    def judge(drop, shift):
        variant = _variant_run(tmp_path, f"v{drop}_{shift}", drop, shift)
        comparison = compare_effect_runs.compare(exact, variant, "guided", "guided", resamples=200)
        return compare_effect_runs.judge_variant(comparison, drops, compare_effect_runs.range_drops(variant, "guided"), 200)

    same = judge(1.0, 0.0)
    assert same["kept"] and same["ratio"] == 1.0 and same["measures_differing"] == []
    weaker = judge(0.7, 0.0)  # optimizes 30% less (ratio ~0.71)
    assert not weaker["kept"] and not weaker["drop_within_tolerance"] and weaker["ratio"] < 0.9
    moved = judge(1.0, 0.5)  # same drop, a measure moved by a constant: its CI excludes 0
    assert not moved["kept"] and moved["measures_differing"] == ["flow_warp_error"]
