"""benchmarks/gpu_check.py: the one-GPU script, run here with --smoke on the CPU into a tmp dir (about 2.5
minutes on 2 cores: 12 sampling workers). Asserts rows of every part with finite numbers and the
environment fields, so a part, backbone or mode that is silently skipped or fails fails the test; never
asserts a timing."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
MODES = ("baseline", "fast", "lean")
NEW_MODES = ("fast-stale", "rollout", "rollout-last", "flowmo")  # issue 31: measured on AnimateDiff
NEW_BACKBONES = ("wan", "cogvideox")  # issue 31: at real size on the GPU (baseline and lean)
EXPECTED_MODES = {"animatediff": ("baseline", "fast", "lean", "fast-stale", "rollout", "rollout-last", "flowmo"),
                  "videocrafter2": MODES, "wan": ("baseline", "lean"), "cogvideox": ("baseline", "lean")}
"""The GPU run's modes per backbone."""
SMOKE_MODES = {"animatediff": ("baseline", "fast", "fast-stale", "rollout", "rollout-last", "flowmo"),
               "videocrafter2": ("baseline", "lean"), "wan": ("baseline", "lean"), "cogvideox": ("baseline", "lean")}
"""--smoke's: AnimateDiff's lean and VideoCrafter2's fast are covered on the other backbones."""


def load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_gpu_check_smoke_has_every_part(tmp_path):
    check = load_check()
    summary = check.main(["--smoke", "--device", "cpu", "--out", str(tmp_path)])

    json_path, md_path = tmp_path / "gpu_check_smoke_cpu.json", tmp_path / "gpu_check_smoke_cpu.md"
    assert Path(summary["json_path"]) == json_path and Path(summary["md_path"]) == md_path
    assert sorted(p.name for p in tmp_path.iterdir()) == [json_path.name, md_path.name]  # one JSON, one table
    data = json.loads(json_path.read_text())
    assert data["ok"] is True and data["smoke"] is True and data["cuda"] is False
    assert list(data["parts"]) == ["kernels", "guidance"]

    env = data["environment"]
    for key in ("device", "device_name", "torch", "diffusers", "transformers", "mpcore", "mpcore_kernels", "python",
                "timestamp"):
        assert env[key], key
    assert env["torch"] == torch.__version__ and "triton" in env and "git_sha" in env and "git_dirty" in env

    # (a) kernels: the copy bandwidth and a measured torch row per kernel and size; Triton rows say why not
    kernels = data["parts"]["kernels"]
    assert kernels["status"] == "ok" and finite_positive(kernels["summary"]["copy_bandwidth"]["gbps"])
    rows = kernels["summary"]["rows"]
    measured = [r for r in rows if r["provider"] == "torch"]
    assert {r["kernel"] for r in measured} == {"flow_tv", "subset_tweedie"} and len(measured) >= 4
    for row in measured:
        assert all(finite_positive(row[k]) for k in ("fwd_ms", "bwd_ms", "full_ms", "gbps", "pct_of_copy_bw"))
        assert row["matches_reference"] is True
    triton = [r for r in rows if r["provider"] == "triton"]
    assert triton and all(r["skipped"] for r in triton)  # on CPU: skipped with its reason, not dropped

    # (b) guidance: every mode of every backbone, measured without error, with ratios to the baseline
    guidance = data["parts"]["guidance"]
    assert guidance["status"] == "ok" and not guidance["skipped"]
    runs = {run["backbone"]: run for run in guidance["runs"]}
    assert list(runs) == list(SMOKE_MODES) and all(run["dtype"] == "float32" for run in runs.values())
    for backbone, run in runs.items():
        assert run["status"] == "ok" and run["steps"] == 3 and run["config"] == "tiny"
        assert [row["mode"] for row in run["rows"]] == list(SMOKE_MODES[backbone])
        for row in run["rows"]:
            assert "error" not in row, (backbone, row["mode"], row.get("error"))
            assert finite_positive(row["wall_s"]) and finite_positive(row["peak_mem_bytes"]), (backbone, row["mode"])
            if row["mode"] != "baseline":  # one optimized step: the paper's range (FlowMo's) scaled to 3 steps
                assert row["opt_range"] == [0, 1] and finite_positive(run["ratios"][f"{row['mode']}/baseline"]["time"])
        assert run["opt_range"] == [0, 1]
    for backbone in NEW_BACKBONES:  # real-size cases of the GPU run: their tiny models, guided
        assert runs[backbone]["frames"] == 9 and "lean" in [row["mode"] for row in runs[backbone]["rows"]]
    rows = {row["mode"]: row for row in runs["animatediff"]["rows"]}
    assert set(NEW_MODES) <= set(rows)
    assert rows["rollout"]["estimate_calls"] == rows["rollout-last"]["estimate_calls"] == 3  # a full 3-call rollout
    assert rows["flowmo"]["iterations"] == 1 and rows["fast-stale"]["iterations"] == 3

    # (c) the table: one row per kernel row (+ the copy), one per guidance mode, the environment line
    md = md_path.read_text()
    lines = md.splitlines()
    assert md.startswith("# gpu_check") and f"torch {torch.__version__}" in md and "diffusers" in md
    assert sum(line.startswith("| kernels |") for line in lines) == len(kernels["summary"]["rows"]) + 1
    for backbone, modes in SMOKE_MODES.items():
        table = [line for line in lines if line.startswith(f"| guidance | {backbone} tiny")]
        assert [line.split("|")[3].strip() for line in table] == list(modes)
    assert "ERROR" not in md and "nan" not in md.lower()


def test_a_failed_mode_is_a_row_and_fails_the_part(monkeypatch):
    check = load_check()
    args = check.resolve_args(check.build_parser().parse_args(["--smoke", "--device", "cpu", "--parts", "guidance",
                                                               "--backbones", "animatediff", "--modes", "fast,lean"]))

    def fake(gargs, mode):
        if mode == "lean":
            raise check.bench_guidance.WorkerError("worker failed", "torch.OutOfMemoryError: CUDA out of memory.\n")
        return {"mode": mode, "wall_s": 1.0 if mode == "baseline" else 2.0, "peak_mem_bytes": 10, "peak_increase_bytes": 5,
                "iterations": 3, "opt_range": [0, 1]}

    monkeypatch.setattr(check.bench_guidance, "measure_mode", fake)
    part = check.run_guidance(args, {"name": "cpu", "bf16_supported": None})
    assert part["status"] == "error"
    run = part["runs"][0]
    assert [row["mode"] for row in run["rows"]] == list(MODES) and run["rows"][2]["out_of_memory"] is True
    assert run["ratios"]["fast/baseline"]["time"] == 2.0 and "lean/baseline" not in run["ratios"]
    table = check.guidance_table_rows(part, cuda=False)
    assert any("OUT OF MEMORY" in row[-1] for row in table)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    check = load_check()
    for argv in (["--device", "cuda"], []):  # the default device of the full check is cuda
        with pytest.raises(SystemExit, match="CUDA is not available.*--smoke"):
            check.main(argv)
    with pytest.raises(SystemExit, match="needs a GPU"):
        check.main(["--device", "cpu"])


def test_bfloat16_on_a_gpu_without_it_is_a_recorded_skip(monkeypatch):
    check = load_check()
    args = check.resolve_args(check.build_parser().parse_args(["--smoke", "--device", "cpu", "--parts", "guidance",
                                                               "--backbones", "videocrafter2,wan"]))
    args.cuda = True  # as on a GPU without bfloat16, at the default dtypes: VideoCrafter2 float16, Wan bfloat16
    args.cases = check.guidance_cases(args)
    monkeypatch.setattr(check.bench_guidance, "measure_mode",
                        lambda gargs, mode: {"mode": mode, "wall_s": 1.0, "peak_mem_bytes": 10, "peak_increase_bytes": 5,
                                             "iterations": 3, "opt_range": [0, 1]})
    part = check.run_guidance(args, {"name": "Tesla T4", "bf16_supported": False})
    assert [(run["backbone"], run["dtype"]) for run in part["runs"]] == [("videocrafter2", "float16")]
    assert part["skipped"] == [{"backbone": "wan", "dtype": "bfloat16", "reason": "Tesla T4 does not support bfloat16"}]
    assert any("skipped" in row[-1] and row[3] == "bfloat16" for row in check.guidance_table_rows(part, cuda=True))


def test_the_full_check_asks_for_real_random_models_and_the_whole_kernel_sweep():
    """What the GPU run passes on (argument resolution only; nothing runs at the real size here)."""
    check = load_check()
    args = check.resolve_args(check.build_parser().parse_args(["--smoke", "--device", "cpu"]))
    args.smoke, args.cuda, args.steps, args.kernel_size_list = False, True, check.DEFAULT_STEPS, list(check.KERNEL_SIZES)
    args.cases = check.guidance_cases(args)
    shapes = {"animatediff": (16, 512, 512), "videocrafter2": (16, 320, 512), "wan": (81, 480, 832),
              "cogvideox": (49, 480, 720)}
    dtypes = {"animatediff": "float16", "videocrafter2": "float16", "wan": "bfloat16", "cogvideox": "bfloat16"}
    assert [(case["backbone"], case["dtype"]) for case in args.cases] == list(dtypes.items())
    for case in args.cases:
        backbone = case["backbone"]
        gargs = check.guidance_args(args, case, "/tmp")
        assert (gargs.config, gargs.backbone, gargs.dtype, gargs.steps) == ("real-random", backbone, dtypes[backbone], 10)
        assert tuple(check.bench_guidance.video_shape(gargs.config, backbone).values()) == shapes[backbone]
        assert gargs.mode_list == list(EXPECTED_MODES[backbone])
    argv = check.kernel_argv(args, "/tmp")
    assert "--smoke" not in argv and argv[argv.index("--providers") + 1] == "torch,compiled,triton"
    assert argv[argv.index("--sizes") + 1] == "128,512,1024"
    resolved = check.bench_kernels.resolve_args(check.bench_kernels.build_parser().parse_args(argv))
    assert resolved.provider_list == ["torch", "compiled", "triton"] and resolved.size_list == [128, 512, 1024]


def test_the_smoke_covers_every_backbone_and_mode_of_the_gpu_run():
    check = load_check()
    gpu = {b: check.BACKBONE_MODES.get(b, check.CORE_MODES) for b in check.BACKBONES}
    assert gpu == EXPECTED_MODES and check.SMOKE_MODES == SMOKE_MODES
    assert set(check.SMOKE_MODES) == set(gpu)
    assert {m for modes in check.SMOKE_MODES.values() for m in modes} == {m for modes in gpu.values() for m in modes}
    assert all(len(modes) >= 2 for modes in check.SMOKE_MODES.values())  # each backbone guided too


def test_modes_and_dtypes_given_apply_to_every_backbone():
    check = load_check()
    args = check.resolve_args(check.build_parser().parse_args(
        ["--smoke", "--device", "cpu", "--backbones", "animatediff,wan", "--modes", "flowmo", "--dtypes", "bfloat16"]))
    assert args.cases == [{"backbone": b, "dtype": "bfloat16", "modes": ["baseline", "flowmo"]} for b in ("animatediff", "wan")]
    with pytest.raises(SystemExit, match="not modes of bench_guidance"):
        check.resolve_args(check.build_parser().parse_args(["--smoke", "--modes", "fast,nope"]))
