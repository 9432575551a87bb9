"""Smoke test of benchmarks/bench_guidance.py: tiny model, 4 steps, baseline and fast, into a tmp dir."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from mpcore.config import scale_opt_range

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_guidance.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_guidance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_guidance_smoke(tmp_path):
    bench = load_bench()
    summary = bench.main(["--smoke", "--device", "cpu", "--out", str(tmp_path), "--modes", "baseline,fast,fast-tiny"])

    json_path = tmp_path / "bench_guidance_tiny-smoke_cpu.json"
    assert Path(summary["json_path"]) == json_path
    data = json.loads(json_path.read_text())
    rows = {row["mode"]: row for row in data["rows"]}
    assert set(rows) == {"baseline", "fast", "fast-tiny"}
    for row in rows.values():
        assert row["wall_s"] > 0
        assert row["steps"] == 4 and row["frames"] == 8 and row["size"] == [64, 64]
        assert row["peak_mem_bytes"] > 0 and row["peak_increase_bytes"] >= 0
        assert row["device"] == "cpu" and row["torch"] and row["mpcore"] and row["timestamp"]
        assert "git_sha" in row
    assert rows["baseline"]["opt_range"] is None
    fast = rows["fast"]
    assert fast["iterations"] == 3 and fast["checkpoint_denoiser"] is False
    assert fast["opt_range"] == [0, 1]  # the paper's (4, 15) at 50 steps, scaled to 4 steps
    assert fast["skipped_updates"] == 0  # gradients reached the token
    assert fast["guidance_decoder"] == "full" and fast["tiny_decoder"] is None
    tiny = rows["fast-tiny"]  # the same guidance, the guided frames decoded by a random TAESD-architecture decoder
    assert tiny["guidance_decoder"] == "tiny" and tiny["tiny_decoder"]["class"] == "AutoencoderTiny"
    assert tiny["iterations"] == 3 and tiny["skipped_updates"] == 0 and max(tiny["token_drift_l2"]) > 0
    ratio = data["ratios"]["fast/baseline"]
    assert ratio["time"] > 0 and ratio["mem_total"] > 0
    assert {t["mode"] for t in data["targets"]} == {"fast", "lean", "fast-tiny", "lean-tiny", "fast-stale",
                                                    "rollout-last", "rollout-stale"}
    assert {t["quantity"] for t in data["targets"] if t["mode"].startswith("lean")} == {"time", "mem_total"}
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))

    md = (tmp_path / "bench_guidance.md").read_text()
    assert md.startswith("# MotionPrompt guidance cost")
    table_rows = [line for line in md.splitlines() if line.startswith("| tiny (smoke) | cpu |")]
    assert [line.split("|")[3].strip() for line in table_rows] == ["baseline", "fast", "fast-tiny"]


def test_real_random_is_accepted_for_every_backbone_at_its_real_size():
    """Argument resolution only: nothing is built or sampled at the real size here."""
    bench = load_bench()
    shapes = {"animatediff": (16, 512, 512), "lavie": (16, 320, 512), "videocrafter2": (16, 320, 512),
              "dynamicrafter": (16, 320, 512)}
    for backbone, (frames, height, width) in shapes.items():
        args = bench.resolve_args(bench.build_parser().parse_args(
            ["--config", "real-random", "--backbone", backbone, "--device", "cpu", "--steps", "12"]))
        assert (args.config, args.backbone, args.steps) == ("real-random", backbone, 12)
        assert bench.video_shape(args.config, backbone) == dict(frames=frames, height=height, width=width)
        command = bench.worker_command(args, "fast", "/tmp/row.json")
        assert command[command.index("--config") + 1] == "real-random"
        assert backbone == "animatediff" or command[command.index("--backbone") + 1] == backbone
        module = __import__(bench.RANDOM_REAL[backbone], fromlist=["load_random_real"])
        assert callable(module.load_random_real)
        # the guided modes take the backbone's paper settings, range scaled to the steps
        motion = bench.motion_config("fast", backbone)
        assert motion.reference_opt_range == bench.paper_settings(backbone)["reference_opt_range"]
        assert motion.resolved_opt_range(12) == scale_opt_range(motion.reference_opt_range, 12)
    # the default stays AnimateDiff, and the existing configs resolve as before
    args = bench.resolve_args(bench.build_parser().parse_args(["--config", "tiny", "--device", "cpu"]))
    assert args.backbone == "animatediff" and bench.video_shape("tiny") == dict(frames=8, height=64, width=64)
    assert "--backbone" not in bench.worker_command(args, "baseline", "/tmp/row.json")


def test_mid_and_real_stay_animatediff_only():
    import pytest

    bench = load_bench()
    for config in ("mid", "real"):
        with pytest.raises(SystemExit, match="AnimateDiff only"):
            bench.resolve_args(bench.build_parser().parse_args(
                ["--config", config, "--backbone", "videocrafter2", "--device", "cpu", "--model", "x"]))


def _row(mode: str, wall_s: float, peak: int) -> dict:
    return {"mode": mode, "wall_s": wall_s, "peak_mem_bytes": peak, "peak_increase_bytes": peak // 2}


def test_the_cheaper_rollouts_are_judged_against_the_one_step_guidance():
    """Issue 31: the variants' targets are ratios to different rows: the stale step to the unguided run, the
    cheaper rollouts to the one-step guidance (fast). A ratio taken to the wrong row fails here."""
    bench = load_bench()
    rows = [_row("baseline", 10.0, 100), _row("fast", 20.0, 200), _row("fast-stale", 16.0, 200),
            _row("rollout", 60.0, 400), _row("rollout-last", 30.0, 220)]
    ratios = bench.compute_ratios(rows, cpu=False)
    assert ratios["fast-stale/baseline"]["time"] == 1.6 and ratios["rollout-last/fast"]["time"] == 1.5
    assert ratios["rollout/fast"]["time"] == 3.0 and "fast/fast" not in ratios
    checks = {(c["mode"], c["quantity"]): c for c in bench.check_targets(ratios)}
    assert checks[("fast-stale", "time")]["met"] is True and checks[("fast-stale", "time")]["reference"] == "baseline"
    assert checks[("rollout-last", "time")]["met"] is True and checks[("rollout-last", "time")]["value"] == 1.5
    assert checks[("rollout-stale", "time")]["met"] is None  # not measured
    assert checks[("fast", "time")]["met"] is False  # 2.0x > 1.8x


def test_each_mode_changes_only_what_it_names():
    bench = load_bench()
    fast, stale, last = (bench.motion_config(m) for m in ("fast", "fast-stale", "rollout-last"))
    assert (fast.step_output, stale.step_output) == ("fresh", "last_iteration")
    assert (last.estimate, last.rollout_steps, last.rollout_gradient) == ("rollout", 3, "last_call")
    assert bench.motion_config("rollout").rollout_gradient == "every_call"
    assert bench.motion_config("rollout").checkpoint_denoiser and not last.checkpoint_denoiser
    toy = bench.motion_config("default", model="toy")  # the toy's own settings, as mpcore run uses them
    assert (toy.reference_opt_range, toy.flow_estimator, toy.estimate, toy.rollout_steps) == ((28, 40), "tvl1_fast",
                                                                                             "rollout", 3)
    assert bench.motion_config("default") == bench.motion_config("fast", checkpoint_vae=True)  # the paper's


def test_resume_keeps_only_rows_measured_with_the_same_settings(tmp_path):
    bench = load_bench()
    args = bench.resolve_args(bench.build_parser().parse_args(["--config", "mid", "--device", "cpu", "--repeats", "3"]))
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"settings": bench.run_settings(args), "rows": [_row("baseline", 1.0, 1)]}))
    assert list(bench.resumed_rows(partial, args)) == ["baseline"]
    other = bench.resolve_args(bench.build_parser().parse_args(["--config", "mid", "--device", "cpu", "--repeats", "1"]))
    assert bench.resumed_rows(partial, other) == {}
    assert bench.resumed_rows(tmp_path / "missing.json", args) == {}
