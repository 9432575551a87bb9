#!/usr/bin/env python
"""Speed of mpcore's compute kernels: the torch reference vs torch.compile vs Triton.

For every requested kernel and spatial size S, each provider is timed on forward, backward and
forward+backward ("full"):

* ``torch``    -- the pure-torch reference (``*_reference``), called directly;
* ``compiled`` -- ``torch.compile(reference, dynamic=False)`` (Inductor; on CPU it needs a C++
  compiler). A failure to compile is recorded in the row's ``error`` and the run continues;
* ``triton``   -- the public function with ``MPCORE_KERNELS=triton``; CUDA only. On CPU the row is
  kept but marked skipped: the Triton interpreter (``TRITON_INTERPRET=1``) checks correctness, it
  is not a performance path.

Workloads (float32 by default, ``--dtype`` to change):

* ``flow_tv``        -- ``flow_tv_loss(flow, reduction="mean")`` on flow (4, 2, S, S): a batch of 4
  flow fields at image resolution S x S (what the MotionPrompt objective regularizes);
* ``subset_tweedie`` -- ``subset_tweedie(x_t, model_out, [7, 8], alpha_bar_t=0.5,
  prediction_type="epsilon", latent_scale=0.18215)`` on latents (1, 4, 16, S/8, S/8): one
  16-frame SD-VAE video whose decoded frames would be S x S, and K=2 selected frames (one adjacent
  pair, as MotionPrompt decodes). Output (2, 4, S/8, S/8) in float32.

Timing: ``--warmup`` untimed forward+backward calls first (they also compile), then the median of
``--repeats`` timed calls per phase (fewer if one call is slow: at most ``--budget-s`` seconds per
(kernel, size, provider), never fewer than 3). Backward times ``torch.autograd.grad`` of a forward
that was computed outside the timed region (recomputed before every repeat, so no retain_graph).
The inputs require grad in every phase (the forward records its graph, as in use). CPU: wall time
with ``time.perf_counter``. CUDA: CUDA events around each call, with the L2 cache flushed (a 256 MiB
buffer zeroed) before every timed call, as ``triton.testing.do_bench`` does.

Byte model (what must move at least; GB/s = bytes / time, 1 GB = 1e9 bytes):

* ``flow_tv``: forward reads the flow once (the scalar output is counted too, 4 bytes); backward
  reads the flow and writes its gradient (2x the flow); full = 3x the flow.
* ``subset_tweedie``: forward reads the K selected frames of x_t and of model_out and writes the
  output; backward reads the output gradient and writes the two input gradients *in full*
  (B, C, F, h, w): autograd hands back full-shape gradients, so the zeros of the F-K unselected
  frames are writes that must happen. Full = forward + backward.

``pct_of_copy_bw`` relates a row's full-pass GB/s to the device copy bandwidth measured in the same
run (``dst.copy_(src)`` of 256 MiB, counted as read + write). On CPU, small sizes live in cache, so
their GB/s can exceed the (DRAM) copy bandwidth. ``relative_to_torch`` is the speed ratio
``torch_ms / provider_ms`` (> 1: faster than the reference) of the full pass; the fwd/bwd variants
are in the JSON. Peak memory: on CUDA, ``max_memory_allocated`` during one full pass minus the
memory allocated before it (inputs excluded); on CPU it is null (tracemalloc does not see torch's
allocator, and the process RSS peak cannot be reset per measurement).

Targets, on CUDA only (reported, never asserted): every Triton row at >= 80 % of the copy
bandwidth, and Triton never slower than the reference (fwd, bwd and full, at every size).

Results: ``<out>/bench_kernels_<device>.json`` and ``.md`` (``--smoke``: ``bench_kernels_smoke_<device>.*``),
overwritten by each run and written atomically; the table is also printed.

Examples::

    python benchmarks/bench_kernels.py                              # CPU: torch and compiled
    python benchmarks/bench_kernels.py --device cuda                # GPU: torch, compiled, triton
    python benchmarks/bench_kernels.py --kernels flow_tv --sizes 256,512 --providers torch,triton
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from mpcore.io.files import write_text_atomic
from mpcore.io.manifest import cpu_stall_us, git_revision

REPO = Path(__file__).resolve().parent.parent

KERNELS = ("flow_tv", "subset_tweedie")
PROVIDERS = ("torch", "compiled", "triton")
DEFAULT_SIZES = (64, 128, 256, 512, 1024)
SMOKE_SIZES = (16, 32)
SMOKE_REPEATS = 2
SMOKE_PROVIDERS = ("torch", "triton")  # torch.compile's first compile alone takes ~20 s on 2 cores
DEFAULT_REPEATS = {"cpu": 25, "cuda": 100}
DEFAULT_WARMUP = {"cpu": 3, "cuda": 10}
MIN_REPEATS = 3

FLOW_BATCH = 4
LATENT_SHAPE = dict(batch=1, channels=4, frames=16)  # latent side = S // 8 (SD VAE)
VAE_FACTOR = 8
FRAME_INDEX = (7, 8)  # K = 2: one adjacent pair
ALPHA_BAR = 0.5
LATENT_SCALE = 0.18215  # SD 1.x VAE scaling factor

COPY_BYTES = 256 * 2**20
L2_FLUSH_BYTES = 256 * 2**20
TARGET_PCT_OF_COPY = 80.0
STALL_WARN = 0.10
"""Above this fraction of CPU-stall time (Linux PSI) during a measurement, the row is flagged."""

BYTE_MODEL = {
    "flow_tv": "fwd: read flow (+4 B scalar out); bwd: read flow + write grad (2x flow); full = fwd + bwd (3x flow)",
    "subset_tweedie": ("fwd: read the K selected frames of x_t and model_out + write the (B*K, C, h, w) output; "
                       "bwd: read the output grad + write both input grads in full (B, C, F, h, w), zeros of the "
                       "unselected frames included; full = fwd + bwd"),
}
MEMORY_NOTE_CPU = ("CPU: peak memory not measured (null): tracemalloc does not see torch's C++ allocator and the "
                   "process RSS peak cannot be reset per measurement")
MEMORY_NOTE_CUDA = ("CUDA: torch.cuda.max_memory_allocated during one forward+backward minus memory_allocated "
                    "before it (inputs and the L2-flush buffer excluded)")
TRITON_CPU_SKIP = ("skipped on CPU: Triton kernels run on CUDA only; the Triton interpreter (TRITON_INTERPRET=1) is "
                   "a correctness tool, not a performance path")


# ----------------------------------------------------------------------------- arguments


def _split(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", metavar="S",
                        help=f"image sides S (comma- or space-separated; default {','.join(map(str, DEFAULT_SIZES))})")
    parser.add_argument("--kernels", nargs="+", help=f"subset of {','.join(KERNELS)} (default all)")
    parser.add_argument("--providers", nargs="+",
                        help=f"subset of {','.join(PROVIDERS)} (default all; --smoke: torch,triton)")
    parser.add_argument("--repeats", type=int, help="timed calls per phase, median reported (default 25 CPU, 100 CUDA)")
    parser.add_argument("--warmup", type=int, help="untimed forward+backward calls first (default 3 CPU, 10 CUDA)")
    parser.add_argument("--budget-s", type=float, default=30.0,
                        help="at most about this many seconds of timed calls per (kernel, size, provider); "
                             f"repeats are reduced to fit, never below {MIN_REPEATS} (default 30)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="dtype of the inputs (the kernels accumulate and output in float32)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="results folder")
    parser.add_argument("--smoke", action="store_true",
                        help=f"sizes {list(SMOKE_SIZES)}, {SMOKE_REPEATS} repeats, 1 warm-up, providers torch "
                             "(+triton on CUDA) unless --providers says otherwise; for tests")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    args.device = torch.device(device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    if args.device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {device}: only cpu and cuda are supported")
    dev = args.device.type

    sizes = _split(args.sizes)
    if sizes is None:
        args.size_list = list(SMOKE_SIZES if args.smoke else DEFAULT_SIZES)
    else:
        try:
            args.size_list = [int(s) for s in sizes]
        except ValueError as exc:
            raise SystemExit(f"--sizes: {exc}") from None
    if not args.size_list or any(s < VAE_FACTOR for s in args.size_list):
        raise SystemExit(f"--sizes must be integers >= {VAE_FACTOR}")

    args.kernel_list = _split(args.kernels) or list(KERNELS)
    unknown = set(args.kernel_list) - set(KERNELS)
    if unknown:
        raise SystemExit(f"--kernels: unknown {sorted(unknown)}; choose from {', '.join(KERNELS)}")
    providers = _split(args.providers)
    if providers is None:
        providers = list(SMOKE_PROVIDERS if args.smoke else PROVIDERS)
    unknown = set(providers) - set(PROVIDERS)
    if unknown:
        raise SystemExit(f"--providers: unknown {sorted(unknown)}; choose from {', '.join(PROVIDERS)}")
    if "torch" not in providers:
        providers.insert(0, "torch")  # every ratio is relative to it
    args.provider_list = [p for p in PROVIDERS if p in providers]

    if args.repeats is None:
        args.repeats = SMOKE_REPEATS if args.smoke else DEFAULT_REPEATS[dev]
    if args.warmup is None:
        args.warmup = 1 if args.smoke else DEFAULT_WARMUP[dev]
    if args.repeats < 1 or args.warmup < 1:
        raise SystemExit("--repeats and --warmup must be >= 1")
    args.min_repeats = min(MIN_REPEATS, args.repeats)
    args.dtype = getattr(torch, args.dtype)
    return args


# ----------------------------------------------------------------------------- environment



def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def versions() -> dict[str, str | None]:
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    try:
        kernels_version = importlib.metadata.version("mpcore-kernels")
    except importlib.metadata.PackageNotFoundError:
        import mpcore_kernels

        kernels_version = getattr(mpcore_kernels, "__version__", None)
    return {"torch": torch.__version__, "triton": triton_version, "mpcore_kernels": kernels_version}


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


@contextmanager
def kernels_mode(mode: str | None):
    """Set MPCORE_KERNELS for the duration (the dispatcher reads it at every call)."""
    if mode is None:
        yield
        return
    old = os.environ.get("MPCORE_KERNELS")
    os.environ["MPCORE_KERNELS"] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MPCORE_KERNELS", None)
        else:
            os.environ["MPCORE_KERNELS"] = old


# ----------------------------------------------------------------------------- workloads


class Case:
    """One (kernel, size) workload: differentiable inputs, the reference and public callables, bytes moved."""

    def __init__(self, kernel: str, size: int, shape: str, inputs: tuple, reference: Callable, public: Callable):
        self.kernel, self.size, self.shape = kernel, size, shape
        self.inputs = inputs  # the differentiable inputs, requires_grad=True
        self.reference = reference  # inputs -> output: the torch reference, eager
        self.public = public  # inputs -> output: the dispatched public function
        self.bytes_fwd = 0
        self.bytes_bwd = 0
        self.grad_out: Any = None  # None for a scalar output
        self.expected: tuple = ()  # the reference output and input grads


def make_case(kernel: str, size: int, device, dtype, seed: int) -> Case:
    import torch

    import mpcore_kernels

    generator = torch.Generator(device="cpu").manual_seed(seed + size)

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype).requires_grad_(True)

    if kernel == "flow_tv":
        flow = rand(FLOW_BATCH, 2, size, size)
        reference_fn, public_fn = mpcore_kernels.flow_tv_loss_reference, mpcore_kernels.flow_tv_loss

        def reference(f):
            return reference_fn(f, reduction="mean")

        def public(f):
            return public_fn(f, reduction="mean")

        case = Case(kernel, size, f"flow {tuple(flow.shape)}", (flow,), reference, public)
        flow_bytes = flow.numel() * flow.element_size()
        out_bytes = 4  # float32 scalar
        case.bytes_fwd = flow_bytes + out_bytes
        case.bytes_bwd = out_bytes + 2 * flow_bytes
    elif kernel == "subset_tweedie":
        side = size // VAE_FACTOR
        b, c, f = LATENT_SHAPE["batch"], LATENT_SHAPE["channels"], LATENT_SHAPE["frames"]
        x_t, model_out = rand(b, c, f, side, side), rand(b, c, f, side, side)
        frame_index = list(FRAME_INDEX)
        reference_fn = getattr(mpcore_kernels, "subset_tweedie_reference")
        public_fn = getattr(mpcore_kernels, "subset_tweedie")
        kwargs = dict(prediction_type="epsilon", latent_scale=LATENT_SCALE)

        def reference(x, m):
            return reference_fn(x, m, frame_index, ALPHA_BAR, **kwargs)

        def public(x, m):
            return public_fn(x, m, frame_index, ALPHA_BAR, **kwargs)

        case = Case(kernel, size, f"latents {tuple(x_t.shape)}, K={len(frame_index)}", (x_t, model_out),
                    reference, public)
        k = len(frame_index)
        in_elt = x_t.element_size()
        selected = b * c * k * side * side
        full = x_t.numel()
        out_bytes = selected * 4  # float32 output (B*K, C, h, w)
        case.bytes_fwd = 2 * selected * in_elt + out_bytes
        case.bytes_bwd = out_bytes + 2 * full * in_elt
    else:
        raise ValueError(kernel)

    out = case.reference(*case.inputs)
    if out.dim() > 0:
        case.grad_out = torch.randn(out.shape, generator=generator).to(device=device, dtype=out.dtype)
    grads = torch.autograd.grad(out, case.inputs, case.grad_out)
    case.expected = (out.detach(), *(g.detach() for g in grads))
    return case


# ----------------------------------------------------------------------------- timing


class Timer:
    """Per-call timing: perf_counter on CPU; CUDA events with an L2 flush before each call on CUDA."""

    def __init__(self, device):
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.device = device
        self.flush_buffer = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device) if self.cuda else None

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def once(self, run: Callable[[Any], Any], state: Any = None) -> float:
        """Seconds taken by run(state); its result is released after the clock stops."""
        if self.cuda:
            self.flush_buffer.zero_()
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            result = run(state)
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end) / 1e3
        else:
            self.sync()
            t0 = time.perf_counter()
            result = run(state)
            self.sync()
            elapsed = time.perf_counter() - t0
        del result
        return elapsed

    def samples(self, run: Callable[[Any], Any], repeats: int, prepare: Callable[[], Any] | None = None) -> list[float]:
        samples = []
        for _ in range(repeats):
            state = prepare() if prepare is not None else None
            self.sync()
            samples.append(self.once(run, state))
            del state
        return samples


def _max_abs_err(got: tuple, expected: tuple) -> tuple[float | None, bool]:
    import torch

    err, close = 0.0, True
    for a, b in zip(got, expected):
        a, b = a.detach().float(), b.float()
        if a.shape != b.shape:
            return None, False
        if a.numel():
            err = max(err, (a - b).abs().max().item())
        close = close and torch.allclose(a, b, rtol=1e-3, atol=1e-5)
    return err, close


def provider_fn(provider: str, case: Case) -> tuple[Callable, str | None]:
    """The callable to time and the MPCORE_KERNELS value to run it under."""
    import torch

    if provider == "torch":
        return case.reference, None
    if provider == "compiled":
        torch._dynamo.reset()  # fresh compile caches per (kernel, size): specialized, no recompile limit
        return torch.compile(case.reference, dynamic=False), None
    if provider == "triton":
        return case.public, "triton"
    raise ValueError(provider)


def _triton_skip(device) -> str | None:
    """Why the Triton provider is not measured here (None: it is): no CUDA device, or no Triton."""
    from mpcore_kernels._dispatch import triton_available

    if device.type != "cuda":
        return TRITON_CPU_SKIP
    if not triton_available():
        return "skipped: Triton is not importable here"
    return None


def _warm_up(case: Case, forward: Callable, backward: Callable, full: Callable, args, timer: Timer,
             row: dict[str, Any]) -> float:
    """The first call (compiles; Triton autotunes) with the correctness check against the reference
    (into ``row``), then ``args.warmup - 1`` more full calls; returns the fastest full call's seconds."""
    # warm-up (compiles; Triton autotunes) and the correctness check against the reference
    t0 = time.perf_counter()
    out = forward()
    grads = backward(out)
    row["max_abs_err"], row["matches_reference"] = _max_abs_err((out, *grads), case.expected)
    del out, grads
    timer.sync()
    row["warmup_s"] = round(time.perf_counter() - t0, 3)
    per_call = math.inf
    for _ in range(args.warmup - 1):
        per_call = min(per_call, timer.once(full))
    if not math.isfinite(per_call):
        per_call = timer.once(full)
    return per_call


def _fit_repeats(per_call: float, args) -> int:
    """``args.repeats``, fewer (not below ``args.min_repeats``) when the three timed phases would overrun the budget."""
    # fit the three phases (roughly 2x full cost, plus the untimed forwards of bwd) into the budget
    repeats = args.repeats
    if per_call * 3 * repeats > args.budget_s:
        repeats = max(args.min_repeats, int(args.budget_s / (3 * per_call)))
    return repeats


def _timed_phases(forward: Callable, backward: Callable, full: Callable, repeats: int, timer: Timer,
                  row: dict[str, Any]) -> tuple[float, float, float]:
    """Median seconds of fwd, bwd (of a forward computed untimed) and full over ``repeats`` calls each;
    the minima and the CPU stall fraction over the timed phases go into ``row``."""
    stall0, wall0 = cpu_stall_us(), time.perf_counter()  # contention over the timed phases only
    fwd = timer.samples(forward, repeats)
    bwd = timer.samples(backward, repeats, prepare=forward)
    whole = timer.samples(full, repeats)
    stall1, wall1 = cpu_stall_us(), time.perf_counter()
    if stall0 is not None and stall1 is not None and wall1 > wall0:
        row["cpu_stall_fraction"] = round((stall1 - stall0) / 1e6 / (wall1 - wall0), 4)
    fwd_s, bwd_s, full_s = statistics.median(fwd), statistics.median(bwd), statistics.median(whole)
    row.update(fwd_min_ms=min(fwd) * 1e3, bwd_min_ms=min(bwd) * 1e3, full_min_ms=min(whole) * 1e3)
    return fwd_s, bwd_s, full_s


def _peak_memory(full: Callable, device) -> int:
    """CUDA bytes allocated at the peak of one full call above what was allocated before it."""
    import torch

    gc.collect()
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    full()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)


def measure(case: Case, provider: str, args, timer: Timer) -> dict[str, Any]:
    """One row: ``provider`` on ``case``, warmed up and checked against the reference, then timed
    (fwd, bwd, full) within the budget; GB/s from the byte model; peak memory on CUDA. A failure
    (e.g. a compile error) is recorded in the row, not raised."""
    import torch

    row: dict[str, Any] = dict(kernel=case.kernel, size=case.size, shape=case.shape, provider=provider,
                               fwd_ms=None, bwd_ms=None, full_ms=None, gbps=None, gbps_fwd=None, gbps_bwd=None,
                               bytes_fwd=case.bytes_fwd, bytes_bwd=case.bytes_bwd, peak_mem_bytes=None,
                               max_abs_err=None, matches_reference=None, repeats=None, warmup_s=None,
                               fwd_min_ms=None, bwd_min_ms=None, full_min_ms=None, cpu_stall_fraction=None,
                               skipped=None, error=None)
    if provider == "triton":
        skipped = _triton_skip(args.device)
        if skipped is not None:
            row["skipped"] = skipped
            return row

    inputs, grad_out = case.inputs, case.grad_out
    try:
        fn, mode = provider_fn(provider, case)
        with kernels_mode(mode):
            def forward(_=None):
                return fn(*inputs)

            def backward(out):
                return torch.autograd.grad(out, inputs, grad_out)

            def full(_=None):
                return backward(forward())

            per_call = _warm_up(case, forward, backward, full, args, timer, row)
            repeats = _fit_repeats(per_call, args)
            row["repeats"] = repeats
            fwd_s, bwd_s, full_s = _timed_phases(forward, backward, full, repeats, timer, row)
            if timer.cuda:
                row["peak_mem_bytes"] = _peak_memory(full, args.device)
    except Exception as exc:  # a failed compile (or kernel) is a result, not a crash
        row["error"] = f"{type(exc).__name__}: {exc}".strip()[:2000]
        row["traceback_tail"] = "".join(traceback.format_exc().splitlines(keepends=True)[-8:])[-3000:]
        print(f"[bench_kernels] {case.kernel} S={case.size} {provider}: ERROR {row['error'][:300]}",
              file=sys.stderr, flush=True)
        return row

    row.update(fwd_ms=fwd_s * 1e3, bwd_ms=bwd_s * 1e3, full_ms=full_s * 1e3,
               gbps=(case.bytes_fwd + case.bytes_bwd) / full_s / 1e9,
               gbps_fwd=case.bytes_fwd / fwd_s / 1e9, gbps_bwd=case.bytes_bwd / bwd_s / 1e9)
    return row


def copy_bandwidth(device, timer: Timer, repeats: int, nbytes: int = COPY_BYTES) -> dict[str, Any]:
    """GB/s of dst.copy_(src) for an nbytes float32 tensor (256 MiB by default), counted as read + write."""
    import torch

    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    seconds = statistics.median(timer.samples(lambda _: dst.copy_(src), repeats))
    return {"bytes": 2 * nbytes, "ms": seconds * 1e3, "gbps": 2 * nbytes / seconds / 1e9,
            "how": f"median time of dst.copy_(src), {nbytes / 2**20:.0f} MiB float32, bytes = read + write"}


# ----------------------------------------------------------------------------- reporting


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def add_comparisons(rows: list[dict[str, Any]], copy: dict[str, Any] | None) -> None:
    base = {(r["kernel"], r["size"]): r for r in rows if r["provider"] == "torch"}
    for row in rows:
        ref = base.get((row["kernel"], row["size"]), {})
        row["relative_to_torch"] = _ratio(ref.get("full_ms"), row["full_ms"])
        row["relative_to_torch_fwd"] = _ratio(ref.get("fwd_ms"), row["fwd_ms"])
        row["relative_to_torch_bwd"] = _ratio(ref.get("bwd_ms"), row["bwd_ms"])
        row["pct_of_copy_bw"] = (100.0 * row["gbps"] / copy["gbps"]) if copy and row["gbps"] else None
        if row["provider"] == "triton" and row["full_ms"] is not None and ref.get("full_ms") is not None:
            row["not_slower_than_torch"] = all(row[f"{p}_ms"] <= ref[f"{p}_ms"] for p in ("fwd", "bwd", "full"))
        else:
            row["not_slower_than_torch"] = None


def check_targets(rows: list[dict[str, Any]], cuda: bool, kernels: list[str]) -> list[dict[str, Any]]:
    """Per kernel: Triton at >= 80 % of copy bandwidth at every size, and never slower than torch."""
    checks = []
    for kernel in kernels:
        triton_rows = [r for r in rows if r["kernel"] == kernel and r["provider"] == "triton"]
        measured = [r for r in triton_rows if r["full_ms"] is not None]
        if not cuda or not measured:
            reason = "not evaluated: no Triton measurements (CPU run)" if not cuda else \
                "not evaluated: no Triton measurements (" + "; ".join(
                    sorted({r["error"] or r["skipped"] or "not run" for r in triton_rows})) + ")"
            checks.append({"kernel": kernel, "target": f">= {TARGET_PCT_OF_COPY:.0f}% of copy bandwidth", "met": None,
                           "detail": reason})
            checks.append({"kernel": kernel, "target": "never slower than the reference", "met": None,
                           "detail": reason})
            continue
        complete = len(measured) == len(triton_rows)
        low = [r["size"] for r in measured if (r["pct_of_copy_bw"] or 0) < TARGET_PCT_OF_COPY]
        slower = [r["size"] for r in measured if r["not_slower_than_torch"] is False]
        worst = min(r["pct_of_copy_bw"] or 0 for r in measured)
        checks.append({"kernel": kernel, "target": f">= {TARGET_PCT_OF_COPY:.0f}% of copy bandwidth",
                       "met": bool(complete and not low),
                       "detail": f"lowest {worst:.0f}%" + (f"; below at S={low}" if low else "")
                                 + ("" if complete else "; some sizes failed")})
        checks.append({"kernel": kernel, "target": "never slower than the reference",
                       "met": bool(complete and not slower),
                       "detail": (f"slower (fwd, bwd or full) at S={slower}" if slower else "not slower at any size")
                                 + ("" if complete else "; some sizes failed")})
    return checks


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _mib(n: int | None) -> str:
    if n is None:
        return "-"
    if abs(n) >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if abs(n) >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**10:.0f} KiB"


TABLE_HEADER = ["| kernel | S | shape | provider | fwd ms | bwd ms | full ms | GB/s (full) | % copy BW | vs torch "
                "| peak mem | notes |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = list(TABLE_HEADER)
    for r in rows:
        notes = []
        if r["skipped"]:
            cpu_skip = r["skipped"] == TRITON_CPU_SKIP
            notes.append("skipped (CPU: no Triton performance path)" if cpu_skip else r["skipped"])
        if r["error"]:
            notes.append("ERROR: " + r["error"].splitlines()[0][:160].replace("|", "/"))
        if r["repeats"] is not None:
            notes.append(f"median of {r['repeats']}")
        if r["matches_reference"] is False:
            notes.append(f"MISMATCH vs reference (max abs err {_num(r['max_abs_err'], '.3g')})")
        if r.get("not_slower_than_torch") is False:
            notes.append("slower than torch")
        stall = r.get("cpu_stall_fraction")
        if stall is not None and stall > STALL_WARN:
            notes.append(f"cpu stall {stall:.0%} (CONTENDED: timing unreliable)")
        vs = "-" if r["relative_to_torch"] is None else f"{r['relative_to_torch']:.2f}x"
        lines.append(f"| {r['kernel']} | {r['size']} | {r['shape']} | {r['provider']} | {_num(r['fwd_ms'], '.3f')} | "
                     f"{_num(r['bwd_ms'], '.3f')} | {_num(r['full_ms'], '.3f')} | {_num(r['gbps'], '.2f')} | "
                     f"{_num(r['pct_of_copy_bw'], '.1f')} | {vs} | {_mib(r['peak_mem_bytes'])} | {'; '.join(notes)} |")
    return lines


def markdown(summary: dict[str, Any]) -> str:
    copy = summary["copy_bandwidth"]
    lines = [
        "# Kernel benchmarks (bench_kernels.py)" + (" -- smoke run" if summary["smoke"] else ""),
        "",
        f"Device: {summary['device']} ({summary['device_name']}, {summary['threads']} torch threads); "
        f"dtype {summary['dtype']}; torch {summary['torch']}, triton {summary['triton']}, "
        f"mpcore_kernels {summary['mpcore_kernels']}; git {summary['git_sha'] or 'n/a'}"
        f"{'-dirty' if summary['git_dirty'] else ''}; {summary['timestamp']}.",
        "",
        f"Copy bandwidth measured in this run: {_num(copy and copy['gbps'], '.1f')} GB/s ({copy and copy['how']}).",
        "",
        "Times are medians per call (ms). fwd: forward with inputs requiring grad; bwd: autograd.grad of a forward "
        "computed outside the timed region; full: both. GB/s = bytes of the byte model / full time. "
        "vs torch = torch full ms / this full ms (> 1 is faster). % copy BW = full GB/s / copy GB/s.",
        "",
        "Byte model:",
        *[f"- {k}: {v}" for k, v in BYTE_MODEL.items()],
        "",
        f"Peak memory: {summary['memory_note']}.",
        "",
        *table_lines(summary["rows"]),
        "",
    ]
    if summary["cuda"]:
        lines.append("Targets (reported, not asserted):")
        for check in summary["targets"]:
            status = "n/a" if check["met"] is None else ("met" if check["met"] else "NOT met")
            lines.append(f"- {check['kernel']}: {check['target']}: {status} ({check['detail']})")
    else:
        lines.append(f"Triton rows: {TRITON_CPU_SKIP}. The targets (Triton >= 80% of copy bandwidth, never slower "
                     "than the reference) are evaluated on CUDA only. On CPU, small sizes are cache-resident, so "
                     "their GB/s may exceed the copy bandwidth.")
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def _copy_reference(args, timer: Timer, cuda: bool) -> dict[str, Any]:
    """This run's copy bandwidth, the yardstick of the GB/s columns (a smaller, shorter copy when smoke)."""
    if args.smoke:
        copy = copy_bandwidth(args.device, timer, repeats=5, nbytes=64 * 2**20)
    else:
        copy = copy_bandwidth(args.device, timer, repeats=50 if cuda else 20)
    print(f"[bench_kernels] copy bandwidth {copy['gbps']:.1f} GB/s", file=sys.stderr, flush=True)
    return copy


def _unbuilt_case_rows(kernel: str, size: int, args, exc: Exception) -> list[dict[str, Any]]:
    """One error row per provider for a (kernel, size) whose case could not be built."""
    error = f"{type(exc).__name__}: {exc}"[:2000]
    print(f"[bench_kernels] {kernel} S={size}: cannot build the case: {error}", file=sys.stderr,
          flush=True)
    return [dict(kernel=kernel, size=size, shape=None, provider=provider, fwd_ms=None,
                 bwd_ms=None, full_ms=None, gbps=None, gbps_fwd=None, gbps_bwd=None,
                 bytes_fwd=None, bytes_bwd=None, peak_mem_bytes=None, max_abs_err=None,
                 matches_reference=None, repeats=None, warmup_s=None, cpu_stall_fraction=None,
                 skipped=None, error=error)
            for provider in args.provider_list]


def _measure_all(args, timer: Timer, cuda: bool) -> list[dict[str, Any]]:
    """The sweep: every (kernel, size) case built once and measured with every provider, in order."""
    import torch

    rows: list[dict[str, Any]] = []
    for kernel in args.kernel_list:
        for size in args.size_list:
            try:
                case = make_case(kernel, size, args.device, args.dtype, args.seed)
            except Exception as exc:  # e.g. the kernel does not exist in this mpcore_kernels yet
                rows.extend(_unbuilt_case_rows(kernel, size, args, exc))
                continue
            for provider in args.provider_list:
                row = measure(case, provider, args, timer)
                if row["full_ms"] is not None:
                    print(f"[bench_kernels] {kernel} S={size} {provider}: fwd {row['fwd_ms']:.3f} ms, "
                          f"bwd {row['bwd_ms']:.3f} ms, full {row['full_ms']:.3f} ms, {row['gbps']:.2f} GB/s "
                          f"(x{row['repeats']}, warm-up {row['warmup_s']:.1f} s)", file=sys.stderr, flush=True)
                rows.append(row)
            del case
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    return rows


def _summary(args, rows: list[dict[str, Any]], copy: dict[str, Any], *, cuda: bool, name: str,
             info: dict[str, Any], load_before: Any) -> dict[str, Any]:
    """The JSON summary: the rows stamped with device, versions, git SHA and time and compared with
    torch and the copy bandwidth, the run's settings and machine, the byte model, the targets."""
    import torch

    dev = args.device.type
    sha, dirty = git_revision(REPO)
    timestamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    dtype = str(args.dtype).replace("torch.", "")
    for row in rows:
        row.update(device=dev, device_name=name, dtype=dtype, threads=torch.get_num_threads(), **info,
                   git_sha=sha, timestamp=timestamp)
    add_comparisons(rows, copy)
    summary: dict[str, Any] = {
        "benchmark": "bench_kernels",
        "smoke": args.smoke,
        "device": dev,
        "cuda": cuda,
        "device_name": name,
        **info,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "git_sha": sha,
        "git_dirty": dirty,
        "timestamp": timestamp,
        "dtype": dtype,
        "kernels": args.kernel_list,
        "sizes": args.size_list,
        "providers": args.provider_list,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "budget_s": args.budget_s,
        "workloads": {
            "flow_tv": f"flow_tv_loss(flow, reduction='mean'), flow ({FLOW_BATCH}, 2, S, S)",
            "subset_tweedie": (f"subset_tweedie(x_t, model_out, {list(FRAME_INDEX)}, alpha_bar_t={ALPHA_BAR}, "
                               f"prediction_type='epsilon', latent_scale={LATENT_SCALE}), latents "
                               f"({LATENT_SHAPE['batch']}, {LATENT_SHAPE['channels']}, {LATENT_SHAPE['frames']}, "
                               f"S/{VAE_FACTOR}, S/{VAE_FACTOR})"),
        },
        "byte_model": BYTE_MODEL,
        "timing": ("median per call; CUDA events with a 256 MiB L2 flush before each call" if cuda else
                   "median per call; time.perf_counter (no cache flush: small sizes are cache-resident)"),
        "memory_note": MEMORY_NOTE_CUDA if cuda else MEMORY_NOTE_CPU,
        "copy_bandwidth": copy,
        "relative_to_torch": "torch full_ms / provider full_ms (> 1: faster than the reference)",
        "rows": rows,
    }
    summary["targets"] = check_targets(rows, cuda, args.kernel_list)
    return summary


def _write(summary: dict[str, Any], args) -> None:
    """Write the summary as JSON and the markdown table (printed too) into ``args.out``; their paths go into the summary."""
    dev = args.device.type
    out = Path(args.out)
    if not out.is_absolute():
        out = Path.cwd() / out
    stem = f"bench_kernels_smoke_{dev}" if args.smoke else f"bench_kernels_{dev}"
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    write_text_atomic(json.dumps(summary, indent=2, allow_nan=False) + "\n", json_path)
    text = markdown(summary)
    write_text_atomic(text, md_path)
    print(text)
    print(f"[bench_kernels] wrote {json_path} and {md_path}", file=sys.stderr, flush=True)
    summary["json_path"], summary["md_path"] = str(json_path), str(md_path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure every (kernel, size, provider), write the JSON and the markdown table; return the summary."""
    args = resolve_args(build_parser().parse_args(argv))
    import torch

    torch.manual_seed(args.seed)
    dev = args.device.type
    cuda = dev == "cuda"
    if cuda:
        torch.cuda.set_device(args.device)
    timer = Timer(args.device)
    load_before = _loadavg()
    info = versions()
    name = device_name(args.device)
    print(f"[bench_kernels] {dev} ({name}), kernels {args.kernel_list}, sizes {args.size_list}, providers "
          f"{args.provider_list}, repeats {args.repeats}, load {load_before}", file=sys.stderr, flush=True)

    copy = _copy_reference(args, timer, cuda)
    rows = _measure_all(args, timer, cuda)
    summary = _summary(args, rows, copy, cuda=cuda, name=name, info=info, load_before=load_before)
    _write(summary, args)
    return summary


if __name__ == "__main__":
    main()
