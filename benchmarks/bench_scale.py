#!/usr/bin/env python
"""Scale-out of ``mpcore generate``: items/s with 1 and N processes, as a ratio.

Runs the same ``mpcore generate --model tiny`` job (``--prompts`` prompts x 1 seed, unguided by
default) once per process count, each into a fresh output folder:

* 1 process: ``python -m mpcore generate ...`` (the ordinary single-process path);
* N processes: ``python -m torch.distributed.run --standalone --nproc-per-node N -m mpcore generate ...``
  (what ``torchrun`` / ``accelerate launch`` start), on the CPU with the gloo backend unless
  ``--device cuda``.

Every process runs with ``OMP_NUM_THREADS=--threads`` (default 1), so N processes use N cores.
Two throughputs per run:

* ``items_per_s``: items / the ``seconds`` of ``generate.json`` (from the start of the generation
  phase, model loading included, to the end of the slowest process): the scale-out itself;
* ``items_per_s_wall``: items / the wall time of the whole command (interpreter start-up, imports
  and the launcher included): what a user waits for, dominated by start-up on a tiny job.

``ratio`` = items_per_s(N) / items_per_s(1); the ideal is N. Each run also records the fraction of
its wall time in which some task waited for a CPU (Linux PSI): above 10 % the row is flagged as
contended (another job competed for the cores: the ratio says little).

Results: ``<out>/bench_scale_<device>.json`` (overwritten; rows + ratios) and one markdown row per
run appended to ``<out>/bench_scale.md``; both written atomically.

Example::

    python benchmarks/bench_scale.py                      # CPU: 1 and 2 processes, ~1-2 min
    python benchmarks/bench_scale.py --processes 1,2,4 --device cuda --prompts 32
"""

from __future__ import annotations

import argparse
import json
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
from mpcore.io.manifest import cpu_stall_us, git_revision

REPO = Path(__file__).resolve().parent.parent
STALL_WARN = 0.10
MD_HEADER = """# Scale-out of `mpcore generate` (bench_scale.py)

items/s = generated items / the generation phase of generate.json (model loading included, slowest
process); wall items/s = items / the whole command (start-up included). ratio = items/s over the
1-process row of the same run; ideal = the process count.

| device | procs | items | s | items/s | ratio | wall s | wall items/s | notes |
|---|---|---|---|---|---|---|---|---|
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2", help="process counts to compare, first is the reference (default 1,2)")
    parser.add_argument("--prompts", type=int, default=8, help="number of prompts (1 seed each; default 8)")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=32, help="height = width in pixels (default 32)")
    parser.add_argument("--guidance", choices=["none", "motionprompt"], default="none")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (one GPU per process)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each process (default 1)")
    parser.add_argument("--out", default="benchmarks/results", help="results folder (default benchmarks/results)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per run")
    return parser


def _stall_fraction(before: int | None, after: int | None, wall: float) -> float | None:
    if before is None or after is None or wall <= 0:
        return None
    return (after - before) / 1e6 / wall


def run_once(args, processes: int, prompts_file: Path, work: Path) -> dict[str, Any]:
    """One ``mpcore generate`` run on ``processes`` processes; its row."""
    out = work / f"out_{processes}p"
    generate = ["generate", "--backbone", "animatediff", "--model", "tiny", "--prompts", str(prompts_file),
                "--out", str(out), "--frames", str(args.frames), "--steps", str(args.steps), "--height", str(args.size),
                "--width", str(args.size), "--guidance", args.guidance, "--device", args.device, "--no-progress"]
    if args.guidance == "motionprompt":
        generate += ["--discriminator", "random", "-o", "iterations=1"]
    if processes == 1:
        command = [sys.executable, "-m", "mpcore", *generate]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   "-m", "mpcore", *generate]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    stall_before = cpu_stall_us()
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - started
    stall_after = cpu_stall_us()
    if result.returncode != 0:
        raise SystemExit(f"[bench_scale] {processes} process(es) failed ({result.returncode}):\n{result.stderr[-3000:]}")
    summary = json.loads((out / "generate.json").read_text())
    generated, seconds = summary["summary"]["generated"], summary["summary"]["seconds"]
    ranks = (summary.get("distributed") or {}).get("ranks") or [
        {"rank": 0, "generated": generated, "seconds": seconds, "items_per_s": generated / seconds if seconds else None}]
    return {
        "processes": processes,
        "device": args.device,
        "items": generated,
        "seconds": seconds,
        "items_per_s": generated / seconds,
        "wall_s": wall,
        "items_per_s_wall": generated / wall,
        "ranks": [{k: row.get(k) for k in ("rank", "host", "device", "generated", "seconds", "items_per_s")} for row in ranks],
        "cpu_stall_fraction": _stall_fraction(stall_before, stall_after, wall),
        "command": command[:1] + ["..."] + command[command.index("mpcore"):],
    }


def markdown_rows(summary: dict[str, Any]) -> list[str]:
    lines = []
    for row in summary["rows"]:
        notes = [f"{summary['config']['prompts']} prompts x 1 seed", f"{summary['config']['frames']} frames",
                 f"{summary['config']['size']}px", f"{summary['config']['steps']} steps",
                 f"guidance {summary['config']['guidance']}", f"{summary['config']['threads']} thread(s)/process",
                 f"{summary['cpu_count']} cpus"]
        per_rank = ", ".join(f"r{r['rank']} {r['items_per_s']:.2f}" for r in row["ranks"] if r.get("items_per_s"))
        if per_rank:
            notes.append(f"per rank items/s {per_rank}")
        stall = row.get("cpu_stall_fraction")
        if stall is not None:
            notes.append(f"cpu stall {stall:.0%}" + (" (CONTENDED: timing unreliable)" if stall > STALL_WARN else ""))
        notes.append(f"torch {summary['torch']}, accelerate {summary['accelerate']}, mpcore {summary['mpcore']}")
        notes.append(f"{summary['git_sha'] or 'no-git'}{'-dirty' if summary['git_dirty'] else ''}")
        notes.append(summary["timestamp"][:10])
        ratio = summary["ratios"].get(str(row["processes"]))
        lines.append(f"| {row['device']} | {row['processes']} | {row['items']} | {row['seconds']:.2f} | "
                     f"{row['items_per_s']:.3f} | {'-' if ratio is None else f'{ratio:.2f}x'} | {row['wall_s']:.1f} | "
                     f"{row['items_per_s_wall']:.3f} | {'; '.join(notes)} |")
    return lines


def append_markdown(path: Path, lines: list[str]) -> None:
    existing = path.read_text() if path.exists() else MD_HEADER
    if not existing.endswith("\n"):
        existing += "\n"
    write_text_atomic(existing + "\n".join(lines) + "\n", path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    counts = [int(n) for n in args.processes.split(",")]
    import accelerate
    import torch

    import mpcore

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        work = Path(tmp)
        prompts_file = work / "prompts.txt"
        prompts_file.write_text("\n".join(f"prompt number {i}: a fox running in the snow" for i in range(args.prompts)) + "\n")
        for processes in counts:
            print(f"[bench_scale] {processes} process(es): {args.prompts} items ...", file=sys.stderr, flush=True)
            row = run_once(args, processes, prompts_file, work)
            print(f"[bench_scale] {processes} process(es): {row['items_per_s']:.3f} items/s "
                  f"({row['seconds']:.1f} s; wall {row['wall_s']:.1f} s)", file=sys.stderr, flush=True)
            if (row["cpu_stall_fraction"] or 0) > STALL_WARN:
                print(f"[bench_scale] WARNING: other processes competed for the CPU ({row['cpu_stall_fraction']:.0%} "
                      "stall time); the timing is unreliable", file=sys.stderr, flush=True)
            rows.append(row)
    reference = rows[0]["items_per_s"]
    ratios = {str(row["processes"]): row["items_per_s"] / reference for row in rows}
    sha, dirty = git_revision(REPO)
    summary: dict[str, Any] = {
        "benchmark": "bench_scale",
        "config": {"prompts": args.prompts, "seeds": 1, "frames": args.frames, "steps": args.steps, "size": args.size,
                   "guidance": args.guidance, "threads": args.threads, "model": "tiny"},
        "device": args.device,
        "git_sha": sha,
        "git_dirty": dirty,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "mpcore": mpcore.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg_after": [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]] if Path("/proc/loadavg").exists() else None,
        "rows": rows,
        "ratios": ratios,
        "ratio_note": "items_per_s(N) / items_per_s(first row); ideal N",
    }
    out = Path(args.out)
    if not out.is_absolute():
        out = Path.cwd() / out
    device_type = torch.device(args.device).type
    json_path = out / f"bench_scale_{device_type}.json"
    write_text_atomic(json.dumps(summary, indent=2) + "\n", json_path)
    lines = markdown_rows(summary)
    md_path = out / "bench_scale.md"
    append_markdown(md_path, lines)
    print("| device | procs | items | s | items/s | ratio | wall s | wall items/s | notes |\n|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"wrote {json_path}\nappended {len(lines)} row(s) to {md_path}")
    return summary


if __name__ == "__main__":
    main()
