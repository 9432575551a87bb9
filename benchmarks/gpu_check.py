#!/usr/bin/env python
"""Every GPU figure of mpcore in one run: ``python benchmarks/gpu_check.py --out DIR`` on one GPU.

No download: the backbones are their official architectures with random weights (timing and memory do
not depend on the weight values). About 9 minutes on one H100 80 GB -- an ESTIMATE from the models'
FLOPs, not a measurement (no GPU was at hand; README "gpu_check.py" derives it). Three parts, one JSON
and one markdown table:

(a) **kernels** -- the sweep of ``bench_kernels.py`` (its ``main``): the torch reference vs
    ``torch.compile`` vs Triton for ``flow_tv`` and ``subset_tweedie``, forward, backward and both, at
    S = 128, 512, 1024 (``--kernel-sizes``), float32 inputs; GB/s of the byte model against the device's
    copy bandwidth measured in the same run.
(b) **guidance** -- ``bench_guidance.py``'s workers (each mode in its own fresh process, its own
    ``torch.cuda.max_memory_allocated`` peak) with each backbone's paper settings at its real size
    (``--config real-random``), 10 DDIM steps (``--steps``, 10-20 recommended) with the paper's
    optimization range scaled to them (:func:`mpcore.config.scale_opt_range`: AnimateDiff's 3 < i < 15 of
    50 is [1, 3) of 10), in the dtype ``mpcore run`` loads each backbone in on CUDA (:data:`BACKBONE_MODES`,
    :func:`default_dtypes`):

    * AnimateDiff 16x512x512, float16: unguided ``baseline``, MotionPrompt ``fast`` (no checkpointing),
      ``lean`` (denoiser + VAE checkpointing), ``fast-stale`` (the sampling step reuses the last
      update's output), ``rollout`` (a 3-call differentiable rollout estimate), ``rollout-last`` (its
      gradient through the last call only) and ``flowmo`` (FlowMo at its plugin's defaults);
    * VideoCrafter2 16x320x512, float16: ``baseline``, ``fast``, ``lean``;
    * Wan 2.1 1.3B 81x480x832 and CogVideoX-2b 49x480x720, bfloat16: ``baseline`` and ``lean``, the
      one MotionPrompt mode that fits 80 GB there (estimate; the causal VAEs refuse the -tiny modes).

    ``--backbones`` / ``--modes`` / ``--dtypes`` replace these lists for every backbone; bfloat16 on a GPU
    without it is a recorded skip. A mode that fails (e.g. out of memory) is a row with its error; the
    others still run.
(c) **environment** -- device name and memory, torch / CUDA / triton / diffusers / transformers /
    mpcore versions, git commit, time taken per part.

Results: ``<out>/gpu_check_<device>.json`` and ``<out>/gpu_check_<device>.md`` (``--smoke``:
``gpu_check_smoke_<device>.*``), overwritten, written atomically; the table is printed too. The exit
code is 1 if any part or row failed (the files are written first), else 0.

``--smoke`` runs the same three parts at reduced size, on the CPU by default: the kernels' smoke sweep
(S = 16, 32; torch and Triton providers, Triton rows skipped off CUDA), and every backbone and mode of
(b) on the backbones' tiny random models (8x64x64; Wan and CogVideoX 9x64x64) for 3 steps in float32
(one optimized step per guided mode, a full 3-call rollout), less AnimateDiff's ``lean`` and
VideoCrafter2's ``fast``, which other backbones cover (:data:`SMOKE_MODES`; about 2.5 minutes on 2 cores,
``tests/test_gpu_check.py``).

Examples::

    python benchmarks/gpu_check.py --out gpu_results                   # one GPU, the full check
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check_smoke  # CPU, reduced size
    python benchmarks/gpu_check.py --parts guidance --backbones wan --modes fast   # one case
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mpcore.io.files import write_text_atomic
from mpcore.io.manifest import git_revision

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

BACKBONES = ("animatediff", "videocrafter2", "wan", "cogvideox")
CORE_MODES = ("baseline", "fast", "lean")
"""The modes of a backbone not in :data:`BACKBONE_MODES`."""
BACKBONE_MODES = {
    # bench_guidance's modes by name. AnimateDiff, the cheapest real-size backbone, carries the guided
    # modes users run besides fast and lean (its rollout checkpoints the denoiser: three calls' activations
    # would exceed 80 GB). Wan and CogVideoX: lean alone, the one MotionPrompt mode that fits 80 GB
    # at their real size. Estimates: README "gpu_check.py"
    "animatediff": ("baseline", "fast", "lean", "fast-stale", "rollout", "rollout-last", "flowmo"),
    "wan": ("baseline", "lean"),
    "cogvideox": ("baseline", "lean"),
}
SMOKE_MODES = {
    # --smoke: every backbone and every mode of BACKBONE_MODES, in two workers fewer (the test's time):
    # AnimateDiff's lean is covered by the three others', VideoCrafter2's fast by AnimateDiff's
    "animatediff": ("baseline", "fast", "fast-stale", "rollout", "rollout-last", "flowmo"),
    "videocrafter2": ("baseline", "lean"),
    "wan": ("baseline", "lean"),
    "cogvideox": ("baseline", "lean"),
}
DEFAULT_STEPS = 10
SMOKE_STEPS = 3
"""The fewest steps with a full 3-call rollout from the one optimized step (step 0)."""
KERNEL_SIZES = (128, 512, 1024)
# the sweep's settings on the GPU: fewer sizes, repeats and seconds per row than bench_kernels' defaults
# (torch.compile compiles once per kernel and size), so the whole check fits in the budget
KERNEL_ARGS = ["--repeats", "50", "--warmup", "5", "--budget-s", "2"]
BUDGET_S = 10 * 60
"""The time one H100 should need for the whole check at the defaults (estimated about 9 minutes, see the
module's doc; reported, never enforced)."""


def _load_script(name: str):
    """A sibling benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_kernels = _load_script("bench_kernels")
bench_guidance = _load_script("bench_guidance")


# ----------------------------------------------------------------------------- arguments


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [item.strip() for item in text.split(",") if item.strip()]


def default_dtypes(backbone: str, cuda: bool) -> list[str]:
    """The model dtypes measured for ``backbone`` unless ``--dtypes`` is given: on CUDA its plugin's
    ``cuda_dtype``, what ``mpcore run`` loads it in (float16; Wan and CogVideoX bfloat16), on the CPU float32."""
    from mpcore import plugins

    return [plugins.get("backbone", backbone).spec.cuda_dtype] if cuda else ["float32"]


def guidance_cases(args) -> list[dict[str, Any]]:
    """The (backbone, dtype, modes) cases of the guidance part: ``--dtypes`` / ``--modes`` for every
    backbone if given, else each backbone's defaults (:data:`BACKBONE_MODES`, ``--smoke``:
    :data:`SMOKE_MODES`; :func:`default_dtypes`); the baseline first in every mode list (the ratios need it)."""
    dtypes = _split(args.dtypes) or None
    unknown = set(dtypes or []) - {"float32", "float16", "bfloat16"}
    if unknown:
        raise SystemExit(f"--dtypes: unknown {sorted(unknown)}; choose from float32,float16,bfloat16")
    modes = _split(args.modes)
    if modes == []:
        raise SystemExit("--modes: empty")
    table = SMOKE_MODES if args.smoke else BACKBONE_MODES
    cases = []
    for backbone in args.backbone_list:
        mode_list = list(dict.fromkeys(["baseline", *(modes or table.get(backbone, CORE_MODES))]))
        unknown = [m for m in mode_list if m not in bench_guidance.MODES]
        if unknown:
            raise SystemExit(f"modes of {backbone}: {unknown} are not modes of bench_guidance.py; choose from "
                             f"{','.join(bench_guidance.MODES)}")
        for dtype in dict.fromkeys(dtypes or default_dtypes(backbone, args.cuda)):
            cases.append({"backbone": backbone, "dtype": dtype, "modes": mode_list})
    return cases


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"),
                        help="results folder (default benchmarks/results)")
    parser.add_argument("--device", default=None, help="cuda (default), cuda:N; with --smoke: cpu (default) or cuda")
    parser.add_argument("--smoke", action="store_true",
                        help="reduced size (tiny models, 3 steps, small kernel shapes), on the CPU by default; for tests")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"DDIM steps of the guidance part (default {DEFAULT_STEPS}; --smoke: {SMOKE_STEPS})")
    parser.add_argument("--dtypes", default=None,
                        help="model dtypes of the guidance part, for every backbone (default on CUDA: each "
                             "backbone's default CUDA dtype, as mpcore run: float16, bfloat16 for wan and cogvideox "
                             "(skipped on a GPU without it); float32 on the CPU)")
    parser.add_argument("--backbones", default=",".join(BACKBONES),
                        help=f"backbones of the guidance part (default {','.join(BACKBONES)}; any of "
                             f"{','.join(bench_guidance.BACKBONES)})")
    parser.add_argument("--modes", default=None,
                        help="guidance modes of bench_guidance.py, for every backbone (default per backbone: "
                             + "; ".join(f"{b} {','.join(m)}" for b, m in BACKBONE_MODES.items())
                             + f"; others {','.join(CORE_MODES)}; --smoke: two fewer, SMOKE_MODES)")
    parser.add_argument("--kernel-sizes", default=None,
                        help=f"image sides S of the kernel sweep (default {','.join(map(str, KERNEL_SIZES))}; "
                             "--smoke: bench_kernels' smoke sizes)")
    parser.add_argument("--parts", default="kernels,guidance", help="kernels,guidance (default both)")
    return parser


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Check the arguments before anything runs. Touches no CUDA device (the guidance workers must
    find all of its memory free): availability is asked, the device is probed in a subprocess."""
    import torch

    device = args.device or ("cpu" if args.smoke else "cuda")
    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise SystemExit(f"gpu_check: --device {device}: {exc}") from None
    args.device = str(torch.device(device))
    if kind == "cuda" and not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA (a CPU-only wheel)"
        raise SystemExit(f"gpu_check: --device {device} but CUDA is not available here (torch {torch.__version__}, "
                         f"{built}). Run it on a machine with an NVIDIA GPU and a CUDA build of torch, or run "
                         "`python benchmarks/gpu_check.py --smoke` for the reduced-size check on the CPU.")
    if kind not in ("cpu", "cuda"):
        raise SystemExit(f"gpu_check: --device {device}: only cuda (and cpu with --smoke) are supported")
    if kind == "cpu" and not args.smoke:
        raise SystemExit("gpu_check: the full check runs the real-size models and needs a GPU (--device cuda); on the "
                         "CPU, run it with --smoke (tiny models, reduced sizes)")
    args.cuda = kind == "cuda"

    args.part_list = _split(args.parts) or []
    unknown = set(args.part_list) - {"kernels", "guidance"}
    if unknown or not args.part_list:
        raise SystemExit(f"--parts: unknown or empty {sorted(unknown)}; choose from kernels,guidance")
    args.backbone_list = _split(args.backbones) or []
    unknown = set(args.backbone_list) - set(bench_guidance.BACKBONES)
    if unknown or not args.backbone_list:
        raise SystemExit(f"--backbones: unknown or empty {sorted(unknown)}; choose from {','.join(bench_guidance.BACKBONES)}")
    args.cases = guidance_cases(args)
    if args.steps is None:
        args.steps = SMOKE_STEPS if args.smoke else DEFAULT_STEPS
    if args.steps < 1:
        raise SystemExit("--steps must be >= 1")
    sizes = _split(args.kernel_sizes)
    try:
        args.kernel_size_list = [int(s) for s in sizes] if sizes else (None if args.smoke else list(KERNEL_SIZES))
    except ValueError as exc:
        raise SystemExit(f"--kernel-sizes: {exc}") from None
    return args


# ----------------------------------------------------------------------------- environment

_PROBE = """
import json, sys, torch
device = torch.device(sys.argv[1])
torch.cuda.set_device(device)
p = torch.cuda.get_device_properties(device)
print(json.dumps(dict(name=p.name, capability=f"{p.major}.{p.minor}", total_memory_bytes=p.total_memory,
                      multiprocessors=p.multi_processor_count, bf16_supported=bool(torch.cuda.is_bf16_supported()))))
"""


def probe_device(args) -> dict[str, Any]:
    """The device's name, memory and bfloat16 support. CUDA: asked in a subprocess, so this process
    holds no CUDA context (and none of its memory) while the guidance workers run."""
    import torch

    if not args.cuda:
        return {"name": bench_kernels.device_name(torch.device("cpu")), "bf16_supported": None}
    completed = subprocess.run([sys.executable, "-c", _PROBE, args.device], capture_output=True, text=True, timeout=300)
    if completed.returncode != 0:
        raise SystemExit(f"gpu_check: could not query {args.device}:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(args, probe: dict[str, Any]) -> dict[str, Any]:
    """Device, versions, commit and machine of this run."""
    import torch

    import mpcore

    sha, dirty = git_revision(REPO)
    return {
        "device": args.device,
        "device_name": probe["name"],
        "device_capability": probe.get("capability"),
        "device_memory_bytes": probe.get("total_memory_bytes"),
        "bf16_supported": probe.get("bf16_supported"),
        **bench_kernels.versions(),  # torch, triton, mpcore_kernels
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "mpcore": mpcore.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_sha": sha,
        "git_dirty": dirty,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else None,
    }


# ----------------------------------------------------------------------------- (a) kernels


def kernel_argv(args, out: str) -> list[str]:
    """bench_kernels' arguments for this check."""
    argv = ["--device", args.device, "--out", out]
    if args.smoke:
        argv.append("--smoke")
    else:
        argv += ["--providers", "torch,compiled,triton", *KERNEL_ARGS]
    if args.kernel_size_list:
        argv += ["--sizes", ",".join(map(str, args.kernel_size_list))]
    return argv


def run_kernels(args) -> dict[str, Any]:
    """The kernel sweep through bench_kernels.main (its files go to a temporary folder): its summary."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_kernels_") as out:
        argv = kernel_argv(args, out)
        try:
            summary = bench_kernels.main(argv)
        except (Exception, SystemExit) as exc:  # a part that fails is a result, not a crash
            return {"status": "error", "error": f"{type(exc).__name__}: {exc}", "argv": argv,
                    "elapsed_s": time.perf_counter() - start}
    for key in ("json_path", "md_path"):
        summary.pop(key, None)
    errors = [r for r in summary["rows"] if r["error"]]
    return {"status": "error" if errors else "ok", "error": f"{len(errors)} row(s) failed" if errors else None,
            "argv": argv, "elapsed_s": time.perf_counter() - start, "summary": summary}


# ----------------------------------------------------------------------------- (b) guidance


def guidance_args(args, case: dict[str, Any], out: str) -> argparse.Namespace:
    """bench_guidance's resolved arguments for one case (backbone, dtype, modes)."""
    config = "tiny" if args.smoke else bench_guidance.REAL_RANDOM
    argv = ["--config", config, "--backbone", case["backbone"], "--steps", str(args.steps), "--device", args.device,
            "--dtype", case["dtype"], "--modes", ",".join(case["modes"]), "--repeats", "1", "--out", out]
    return bench_guidance.resolve_args(bench_guidance.build_parser().parse_args(argv))


def _error_row(mode: str, exc: Exception) -> dict[str, Any]:
    text = str(exc)
    tail = getattr(exc, "tail", "") or ""
    oom = "out of memory" in (text + tail).lower() or "OutOfMemoryError" in tail
    last = [line for line in tail.splitlines() if line.strip()]
    return {"mode": mode, "error": (last[-1] if last else text.splitlines()[0])[:500], "out_of_memory": oom,
            "stderr_tail": tail[-4000:]}


def run_guidance_case(args, case: dict[str, Any]) -> dict[str, Any]:
    """Every mode of one case, each in its own worker process; ratios to the baseline."""
    start = time.perf_counter()
    backbone, dtype = case["backbone"], case["dtype"]
    with tempfile.TemporaryDirectory(prefix="gpu_check_guidance_") as out:
        gargs = guidance_args(args, case, out)
        rows = []
        for mode in gargs.mode_list:
            print(f"[gpu_check] guidance: {backbone} {gargs.config} {dtype} {mode} ({gargs.steps} steps) ...",
                  file=sys.stderr, flush=True)
            try:
                rows.append(bench_guidance.measure_mode(gargs, mode))
            except Exception as exc:  # e.g. out of memory in one mode: recorded, the others still run
                rows.append(_error_row(mode, exc))
                print(f"[gpu_check] {backbone} {dtype} {mode} FAILED: {rows[-1]['error']}", file=sys.stderr, flush=True)
    measured = [row for row in rows if "error" not in row]
    ratios = bench_guidance.compute_ratios(measured, cpu=not args.cuda)
    shape = bench_guidance.video_shape(gargs.config, backbone)
    failed = [row["mode"] for row in rows if "error" in row]
    return {
        "backbone": backbone, "config": gargs.config, "dtype": dtype, "steps": gargs.steps, **shape,
        "motionprompt": bench_guidance.paper_settings(backbone),
        "opt_range": list(bench_guidance.motion_config("fast", backbone).resolved_opt_range(gargs.steps)),
        "status": "error" if failed else "ok", "error": f"failed modes: {', '.join(failed)}" if failed else None,
        "rows": rows, "ratios": ratios, "targets": bench_guidance.check_targets(ratios),
        "elapsed_s": time.perf_counter() - start,
    }


def run_guidance(args, probe: dict[str, Any]) -> dict[str, Any]:
    """Every (backbone, dtype) case; bfloat16 on a GPU without it is a recorded skip, not a silent one."""
    start = time.perf_counter()
    runs, skipped = [], []
    for case in args.cases:
        backbone, dtype = case["backbone"], case["dtype"]
        if dtype == "bfloat16" and args.cuda and not probe.get("bf16_supported"):
            skipped.append({"backbone": backbone, "dtype": dtype, "reason": f"{probe['name']} does not support bfloat16"})
            continue
        try:
            runs.append(run_guidance_case(args, case))
        except (Exception, SystemExit) as exc:  # the case could not start; the others still run
            runs.append({"backbone": backbone, "dtype": dtype, "status": "error", "rows": [],
                         "error": f"{type(exc).__name__}: {exc}"[:2000]})
    failed = [f"{r['backbone']} {r['dtype']}" for r in runs if r["status"] != "ok"]
    return {
        "status": "error" if failed or not runs else "ok",
        "error": (f"failed: {'; '.join(failed)}" if failed else None) if runs else "no case ran",
        "memory": ("torch.cuda.max_memory_allocated over the timed run (weights included); mem x = ratio of these "
                   "peaks" if args.cuda else "process peak RSS; mem x = ratio of the increases over the loaded model"),
        "runs": runs, "skipped": skipped, "elapsed_s": time.perf_counter() - start,
    }


# ----------------------------------------------------------------------------- the table


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, fmt)


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.1f} MiB"


def _cell(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def kernel_table_rows(part: dict[str, Any]) -> list[list[str]]:
    summary = part.get("summary")
    if summary is None:
        return [["kernels", "-", "-", "-", "-", "-", "-", "-", f"ERROR: {part['error']}"]]
    copy = summary["copy_bandwidth"]
    rows = [["kernels", f"copy {copy['bytes'] // 2 // 2**20} MiB", "dst.copy_(src)", "float32",
             f"{_num(copy['ms'], '.3f')} ms", "-", f"{_num(copy['gbps'], '.1f')} (100%)", "-",
             "the yardstick of % copy BW"]]
    for r in summary["rows"]:
        notes = []
        if r["skipped"]:
            notes.append(r["skipped"].split(";")[0])  # e.g. "skipped on CPU: Triton kernels run on CUDA only"
        if r["error"]:
            notes.append("ERROR: " + r["error"].splitlines()[0][:160])
        if r["matches_reference"] is True:
            notes.append("matches reference")
        elif r["matches_reference"] is False:
            notes.append(f"MISMATCH (max abs err {_num(r['max_abs_err'], '.3g')})")
        time_text = "-" if r["full_ms"] is None else \
            f"{r['full_ms']:.3f} ms (fwd {r['fwd_ms']:.3f}, bwd {r['bwd_ms']:.3f})"
        vs = "-" if r["relative_to_torch"] is None else f"{r['relative_to_torch']:.2f}x speed of torch"
        bw = "-" if r["gbps"] is None else f"{r['gbps']:.1f} ({_num(r['pct_of_copy_bw'], '.0f')}%)"
        rows.append(["kernels", f"{r['kernel']} S={r['size']}", r["provider"], r["dtype"], time_text, vs, bw,
                     _bytes(r["peak_mem_bytes"]), "; ".join(notes)])
    return rows


def guidance_table_rows(part: dict[str, Any], cuda: bool) -> list[list[str]]:
    rows = []
    for run in part["runs"]:
        if "frames" not in run:  # the case failed before any mode ran
            rows.append(["guidance", run["backbone"], "all modes", run["dtype"], "-", "-", "-", "-", f"ERROR: {run['error']}"])
            continue
        case = f"{run['backbone']} {run['config']} {run['frames']}x{run['height']}x{run['width']}, {run['steps']} steps"
        for row in run["rows"]:
            if "error" in row:
                rows.append(["guidance", case, row["mode"], run["dtype"], "-", "-", "-", "-",
                             ("OUT OF MEMORY: " if row["out_of_memory"] else "ERROR: ") + row["error"][:200]])
                continue
            ratio = run["ratios"].get(f"{row['mode']}/baseline", {})
            base = row["mode"] == "baseline"
            time_x = "1.00x" if base else f"{_num(ratio.get('time'), '.2f')}x time"
            mem_x = "1.00x" if base else f"{_num(ratio.get('mem'), '.2f')}x"
            memory = _bytes(row["peak_mem_bytes"]) + ("" if cuda else f" (+{_bytes(row['peak_increase_bytes'])})")
            notes = []
            if not base:
                notes.append(f"K={row['iterations']} range {row['opt_range']}")
                notes += bench_guidance.target_notes(row, run["targets"])
            stall = row.get("cpu_stall_fraction")
            if stall is not None and stall > bench_guidance.STALL_WARN:
                notes.append(f"cpu stall {stall:.0%} (CONTENDED)")
            rows.append(["guidance", case, row["mode"], run["dtype"], f"{row['wall_s']:.2f} s/video", time_x, "-",
                         f"{memory} ({mem_x})", "; ".join(notes)])
    for skip in part["skipped"]:
        rows.append(["guidance", skip["backbone"], "all modes", skip["dtype"], "-", "-", "-", "-", f"skipped: {skip['reason']}"])
    if not part["runs"] and not part["skipped"]:
        rows.append(["guidance", "-", "-", "-", "-", "-", "-", "-", f"ERROR: {part['error']}"])
    return rows


TABLE_HEADER = ["part", "case", "variant", "dtype", "time", "vs reference", "GB/s (% copy BW)", "peak mem (x baseline)",
                "notes"]


def markdown(summary: dict[str, Any]) -> str:
    env = summary["environment"]
    parts = summary["parts"]
    rows = []
    if "kernels" in parts:
        rows += kernel_table_rows(parts["kernels"])
    if "guidance" in parts:
        rows += guidance_table_rows(parts["guidance"], summary["cuda"])
    memory = "" if env["device_memory_bytes"] is None else f", {_bytes(env['device_memory_bytes'])}"
    capability = "" if env["device_capability"] is None else f", compute capability {env['device_capability']}"
    lines = [
        "# gpu_check: mpcore's kernels and guidance cost on one device" + (" -- smoke run (reduced size)" if summary["smoke"] else ""),
        "",
        f"Device: {env['device']} ({env['device_name']}{memory}{capability}). torch {env['torch']} (built with CUDA "
        f"{env['cuda']}), "
        f"triton {env['triton']}, diffusers {env['diffusers']}, transformers {env['transformers']}, mpcore {env['mpcore']}, "
        f"mpcore_kernels {env['mpcore_kernels']}, Python {env['python']}; git {env['git_sha'] or 'n/a'}"
        f"{'-dirty' if env['git_dirty'] else ''}; {env['timestamp']}.",
        "",
        f"Took {summary['elapsed_s']:.0f} s (" + ", ".join(f"{name} {part['elapsed_s']:.0f} s" for name, part in parts.items())
        + (f"; budget {BUDGET_S} s on one H100 at the defaults)" if not summary["smoke"] else ")") + ".",
        "",
        "Kernels: median ms per call; vs reference = the torch reference's time / this time (> 1: faster); GB/s of "
        "the byte model (bench_kernels.py) and its share of the copy bandwidth measured in this run. Guidance: wall "
        "seconds of one video (sampling only); vs reference = time / the baseline's; peak mem = "
        + ("torch.cuda.max_memory_allocated over the timed run, weights included" if summary["cuda"] else
           "the worker's peak RSS (+ increase over the loaded model; x = ratio of the increases)")
        + "; backbones are the official architectures with random weights (no download)"
        + (" -- smoke: the tiny random models; kernel providers torch and triton only (torch.compile's first "
           "compile alone takes ~20 s on 2 cores; Triton runs on CUDA only)" if summary["smoke"] else "") + ".",
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "---|" * len(TABLE_HEADER),
        *["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows],
        "",
    ]
    failed = [f"{name}: {part['error']}" for name, part in parts.items() if part["status"] != "ok"]
    if failed:
        lines += ["Failures: " + "; ".join(failed), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the parts, write ``gpu_check_<device>.json`` and ``.md`` into ``--out``; return the summary
    (``summary["ok"]``: no part and no row failed)."""
    args = resolve_args(build_parser().parse_args(argv))
    start = time.perf_counter()
    probe = probe_device(args)
    cases = "; ".join(f"{c['backbone']} {c['dtype']} {','.join(c['modes'])}" for c in args.cases)
    print(f"[gpu_check] {args.device} ({probe['name']}): parts {args.part_list}, cases {cases}, "
          f"{args.steps} steps{' (smoke)' if args.smoke else ''}", file=sys.stderr, flush=True)
    parts: dict[str, Any] = {}
    # guidance first: its workers then find the GPU's memory untouched by this process
    if "guidance" in args.part_list:
        parts["guidance"] = run_guidance(args, probe)
    if "kernels" in args.part_list:
        parts["kernels"] = run_kernels(args)
    parts = {name: parts[name] for name in ("kernels", "guidance") if name in parts}
    summary: dict[str, Any] = {
        "benchmark": "gpu_check",
        "smoke": args.smoke,
        "cuda": args.cuda,
        "environment": environment(args, probe),
        "settings": {"steps": args.steps, "backbones": args.backbone_list, "cases": args.cases,
                     "kernel_sizes": args.kernel_size_list, "budget_s": BUDGET_S},
        "parts": parts,
        "elapsed_s": time.perf_counter() - start,
    }
    summary["ok"] = all(part["status"] == "ok" for part in parts.values())
    summary["within_budget"] = None if args.smoke else summary["elapsed_s"] <= BUDGET_S

    out = Path(args.out)
    if not out.is_absolute():
        out = Path.cwd() / out
    kind = args.device.split(":")[0]
    stem = f"gpu_check_smoke_{kind}" if args.smoke else f"gpu_check_{kind}"
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    text = markdown(summary)
    write_text_atomic(json.dumps(_finite(summary), indent=2, allow_nan=False, default=str) + "\n", json_path)
    write_text_atomic(text, md_path)
    print(text)
    print(f"[gpu_check] wrote {json_path} and {md_path}" + ("" if summary["ok"] else " (some parts FAILED)"),
          file=sys.stderr, flush=True)
    summary["json_path"], summary["md_path"] = str(json_path), str(md_path)
    return summary


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
