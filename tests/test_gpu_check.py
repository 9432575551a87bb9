"""benchmarks/gpu_check.py: the one-GPU script, run here with --smoke on the CPU into a tmp dir (about a
minute on 2 cores: 6 sampling workers). Asserts rows of every part with finite numbers and the
environment fields, so a part that is silently skipped fails; never asserts a timing."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
MODES = ("baseline", "fast", "lean")


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

    # (b) guidance: every mode of both backbones, measured, with ratios to the baseline
    guidance = data["parts"]["guidance"]
    assert guidance["status"] == "ok" and not guidance["skipped"]
    runs = {(run["backbone"], run["dtype"]): run for run in guidance["runs"]}
    assert set(runs) == {("animatediff", "float32"), ("videocrafter2", "float32")}
    for run in runs.values():
        assert run["status"] == "ok" and run["steps"] == 3 and run["config"] == "tiny"
        assert [row["mode"] for row in run["rows"]] == list(MODES)
        for row in run["rows"]:
            assert finite_positive(row["wall_s"]) and finite_positive(row["peak_mem_bytes"]), row["mode"]
        for mode in ("fast", "lean"):
            assert finite_positive(run["ratios"][f"{mode}/baseline"]["time"])
        assert run["opt_range"] == [0, 1]  # the paper's range scaled to 3 steps

    # (c) the table: one row per kernel row (+ the copy), one per guidance mode, the environment line
    md = md_path.read_text()
    lines = md.splitlines()
    assert md.startswith("# gpu_check") and f"torch {torch.__version__}" in md and "diffusers" in md
    assert sum(line.startswith("| kernels |") for line in lines) == len(rows) + 1
    for backbone in ("animatediff", "videocrafter2"):
        table = [line for line in lines if line.startswith(f"| guidance | {backbone} tiny")]
        assert [line.split("|")[3].strip() for line in table] == list(MODES)
    assert "ERROR" not in md and "nan" not in md.lower()


def test_a_failed_mode_is_a_row_and_fails_the_part(monkeypatch):
    check = load_check()
    args = check.resolve_args(check.build_parser().parse_args(["--smoke", "--device", "cpu", "--parts", "guidance"]))

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
                                                               "--backbones", "videocrafter2"]))
    args.cuda, args.dtype_list = True, ["float16", "bfloat16"]  # as on a GPU without bfloat16
    monkeypatch.setattr(check.bench_guidance, "measure_mode",
                        lambda gargs, mode: {"mode": mode, "wall_s": 1.0, "peak_mem_bytes": 10, "peak_increase_bytes": 5,
                                             "iterations": 3, "opt_range": [0, 1]})
    part = check.run_guidance(args, {"name": "Tesla T4", "bf16_supported": False})
    assert [run["dtype"] for run in part["runs"]] == ["float16"]
    assert part["skipped"] == [{"backbone": "videocrafter2", "dtype": "bfloat16", "reason": "Tesla T4 does not support bfloat16"}]
    assert any("skipped" in row[-1] and row[3] == "bfloat16" for row in check.guidance_table_rows(part, cuda=True))


def test_the_full_check_asks_for_real_random_models_and_the_whole_kernel_sweep():
    """What the GPU run passes on (argument resolution only; nothing runs at the real size here)."""
    check = load_check()
    args = check.resolve_args(check.build_parser().parse_args(["--smoke", "--device", "cpu"]))
    args.smoke, args.steps, args.kernel_size_list = False, check.DEFAULT_STEPS, list(check.KERNEL_SIZES)
    for backbone, shape in (("animatediff", (16, 512, 512)), ("videocrafter2", (16, 320, 512))):
        gargs = check.guidance_args(args, backbone, "float16", "/tmp")
        assert (gargs.config, gargs.backbone, gargs.dtype, gargs.steps) == ("real-random", backbone, "float16", 10)
        assert tuple(check.bench_guidance.video_shape(gargs.config, backbone).values()) == shape
        assert gargs.mode_list == list(MODES)
    argv = check.kernel_argv(args, "/tmp")
    assert "--smoke" not in argv and argv[argv.index("--providers") + 1] == "torch,compiled,triton"
    assert argv[argv.index("--sizes") + 1] == "128,512,1024"
    resolved = check.bench_kernels.resolve_args(check.bench_kernels.build_parser().parse_args(argv))
    assert resolved.provider_list == ["torch", "compiled", "triton"] and resolved.size_list == [128, 512, 1024]
