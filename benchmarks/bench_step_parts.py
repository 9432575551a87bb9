#!/usr/bin/env python
"""Where a guided step's time goes: per-call timings of its parts on the mid AnimateDiff (CPU), and a cost
model that adds them up into each guided mode's step and whole-video ratio.

docs/benchmarks.md ("Where a guided step's time goes") reads these numbers. Each part is timed ``--repeats``
times, interleaved (part A, B, C, D, A, B, ...), so a slow drift of the machine's load hits every part
alike; the median is reported, with every run, and the ratio to the unguided step:

* ``cfg_forward_batch2`` -- the unguided step's model call: CFG as one batch [uncond, cond];
* ``forward_batch1`` -- one branch alone (guided steps call the unconditional and the final
  conditional branch separately);
* ``cond_forward_backward`` -- an optimizer iteration's conditional forward + backward to the condition;
* ``decode2_forward_backward`` -- the full VAE decode of the two guided frames with backward;
* ``raft_disc_forward_backward`` -- RAFT (random weights: time does not depend on them) on the pair and the
  ViT discriminator, with backward to the frames;
* ``cfg_batch2_forward_backward`` -- a later call of a rollout estimate: CFG as one batch [uncond, cond]
  with backward to the condition and to x (x depends on the token there, so both branches carry gradient);
* ``cfg_batch2_forward_backward_ckpt`` / ``cond_forward_backward_ckpt`` -- the same two denoiser calls with
  the denoiser's gradient checkpointing on (``set_denoiser_checkpointing(True)``, as ``lean`` and ``rollout``);
* ``decode2_forward_backward_ckpt`` -- the decode with the VAE's per-block checkpointing (as ``lean``).

The cost model (:func:`step_calls`, one list of (part, count) per mode, read from the mode's settings) sums the parts of one guided step of
each bench_guidance mode and predicts its whole-video time over the unguided run: S = 50 steps, G = 11 of them
guided (the paper's range [4, 15)), K = 3 iterations, N = 3 rollout calls; an unguided step is one
``cfg_forward_batch2``. Each mode's "floor" is the same with the denoiser's calls alone (no decode, flow or
discriminator): what no cheaper decoder or flow estimator can go below.

    python benchmarks/bench_step_parts.py --threads 1 --repeats 7      # ~5 min on an idle machine
    python benchmarks/bench_step_parts.py --smoke --out /tmp/parts     # tiny model, 8x64x64, 1 repeat (the test)

Prints the parts and the model, and writes ``<out>/bench_step_parts_mid_cpu_<threads>t.json`` (``--smoke``:
``bench_step_parts_tiny-smoke_cpu_<threads>t.json``) atomically. Run it on an idle machine: other processes
make single calls slower by several times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_guidance  # noqa: E402

from mpcore import plugins  # noqa: E402
from mpcore.io.files import write_text_atomic  # noqa: E402
from mpcore.sampling import cfg_output  # noqa: E402

SEED = 0
STEPS = 50
"""Sampling steps of the predicted video (the paper's)."""
CFG_SCALE = 7.5
UNGUIDED = "cfg_forward_batch2"
"""The part one unguided step costs."""
PARTS = ("cfg_forward_batch2", "forward_batch1", "cond_forward_backward", "decode2_forward_backward",
         "raft_disc_forward_backward",  # the original five, in their order; then the rollout's and the checkpointed
         "cfg_batch2_forward_backward", "cond_forward_backward_ckpt", "cfg_batch2_forward_backward_ckpt",
         "decode2_forward_backward_ckpt")
"""The timed parts, in the order of each round."""
DENOISER_PARTS = ("cfg_forward_batch2", "forward_batch1", "cond_forward_backward", "cond_forward_backward_ckpt",
                  "cfg_batch2_forward_backward", "cfg_batch2_forward_backward_ckpt")
"""The parts that are denoiser calls: a mode's floor counts only these."""


# ----------------------------------------------------------------------------- the cost model


COST_MODES = ("fast", "lean", "fast-stale", "rollout", "rollout-stale", "rollout-last")
"""The bench_guidance modes the cost model adds up."""


def step_calls(k: int, n: int) -> dict[str, list[tuple[str, int]]]:
    """The parts of one guided step of each mode of :data:`COST_MODES`, with their counts, for K = ``k``
    iterations and a rollout of N = ``n`` calls, read from the mode's own settings
    (``bench_guidance.motion_config``): so the model cannot drift from what bench_guidance runs."""
    return {mode: guided_step_calls(bench_guidance.motion_config(mode), k, n) for mode in COST_MODES}


def guided_step_calls(motion, k: int, n: int) -> list[tuple[str, int]]:
    """One guided step of ``motion`` (a MotionPromptConfig): the unconditional output at x_t once; K iterations,
    each an estimate (its denoiser calls, forward + backward), the decode of two frames, RAFT + discriminator;
    then the sampling step's conditional forward unless ``step_output='last_iteration'`` reuses the last
    iteration's output at x_t. ``_ckpt`` parts where the mode checkpoints."""
    ckpt = "_ckpt" if motion.checkpoint_denoiser else ""
    decode = "decode2_forward_backward" + ("_ckpt" if motion.checkpoint_vae else "")
    fresh = 1 if motion.step_output == "fresh" else 0
    calls = n if motion.estimate == "rollout" else 1
    if calls > 1 and motion.rollout_gradient == "last_call":
        # once per step without gradient: uncond at x_t, call 1's conditional branch, the middle calls' CFG
        # batches, uncond at the last call's x; each iteration differentiates the last call's conditional branch
        denoiser = [("forward_batch1", 3 + fresh), ("cfg_forward_batch2", calls - 2), (f"cond_forward_backward{ckpt}", k)]
    else:  # every call with gradient: call 1's conditional branch, then CFG batches whose x depends on the token
        denoiser = [("forward_batch1", 1 + fresh), (f"cond_forward_backward{ckpt}", k)]
        if calls > 1:
            denoiser.append((f"cfg_batch2_forward_backward{ckpt}", k * (calls - 1)))
    return [*denoiser, (decode, k), ("raft_disc_forward_backward", k)]


def predict(medians: dict[str, float], k: int, n: int, steps: int, guided: int) -> dict[str, dict]:
    """Per mode: the guided step's seconds and each part's share of it, the predicted whole-video ratio to
    the unguided run ((steps - guided) unguided steps + guided guided steps, over steps unguided steps), and
    the same two numbers for the floor (denoiser calls only)."""
    unguided = medians[UNGUIDED]

    def video_ratio(step_s: float) -> float:
        return ((steps - guided) * unguided + guided * step_s) / (steps * unguided)

    model = {}
    for mode, calls in step_calls(k, n).items():
        step_s = sum(medians[part] * count for part, count in calls)
        floor_s = sum(medians[part] * count for part, count in calls if part in DENOISER_PARTS)
        model[mode] = {
            "calls": [[part, count] for part, count in calls],
            "step_s": step_s,
            "step_x_unguided": step_s / unguided,
            "shares": {part: medians[part] * count / step_s for part, count in calls},
            "video_ratio": video_ratio(step_s),
            "floor_step_s": floor_s,
            "floor_video_ratio": video_ratio(floor_s),
        }
    return model


# ----------------------------------------------------------------------------- the timed parts


def load_model(config: str, device: torch.device):
    """The mid AnimateDiff of bench_guidance, or (``tiny``) the plugin's reserved tiny random one; float32."""
    if config == "mid":
        return bench_guidance.load_mid(device, torch.float32, SEED)
    from mp_plugin_animatediff.backbone import load

    return load("tiny", device=device, dtype=torch.float32, seed=SEED)


def with_denoiser_checkpointing(backbone, call):
    """``call`` with the denoiser's gradient checkpointing on (off again after it), named ``<name>_ckpt``."""
    def checkpointed():
        backbone.set_denoiser_checkpointing(True)
        try:
            call()
        finally:
            backbone.set_denoiser_checkpointing(False)

    checkpointed.__name__ = f"{call.__name__}_ckpt"
    return checkpointed


def denoiser_parts(backbone, latents: torch.Tensor) -> list:
    """The denoiser's calls of a step at t = 500, on ``latents`` (1, C, F, h, w)."""
    t = torch.tensor(500)
    cond, uncond = backbone.encode_prompt(["a horse galloping"]), backbone.encode_prompt([""])

    def cfg_forward_batch2():
        with torch.no_grad():
            backbone.predict(torch.cat([latents] * 2), t, torch.cat([uncond, cond]))

    def forward_batch1():
        with torch.no_grad():
            backbone.predict(latents, t, cond)

    def cond_forward_backward():
        c = cond.clone().requires_grad_(True)
        backbone.predict(latents, t, c)[:, :, :2].sum().backward()

    def cfg_batch2_forward_backward():
        x, c = latents.clone().requires_grad_(True), cond.clone().requires_grad_(True)
        cfg_output(backbone, x, t, c, uncond, CFG_SCALE).sum().backward()

    return [cfg_forward_batch2, forward_batch1, cond_forward_backward, cfg_batch2_forward_backward,
            with_denoiser_checkpointing(backbone, cond_forward_backward),
            with_denoiser_checkpointing(backbone, cfg_batch2_forward_backward)]


def guidance_parts(backbone, shape: dict[str, int], device: torch.device) -> list:
    """The decode of the two guided frames (full VAE, and per-block checkpointed) and RAFT + discriminator."""
    f = backbone.vae_scale_factor
    frames_latents = torch.randn(2, backbone.latent_channels, shape["height"] // f, shape["width"] // f,
                                 generator=torch.Generator().manual_seed(1))
    images = torch.rand(2, 3, shape["height"], shape["width"], generator=torch.Generator().manual_seed(2)) * 2 - 1
    flow = plugins.get("flow", "raft").spec.load("random", device, seed=SEED)
    disc = plugins.get("discriminator", "vit").spec.random(seed=SEED, device=device)

    def decode2_forward_backward():
        z = frames_latents.clone().requires_grad_(True)
        backbone.decode(z).sum().backward()

    def decode2_forward_backward_ckpt():
        z = frames_latents.clone().requires_grad_(True)
        backbone.decode(z, checkpoint=True).sum().backward()

    def raft_disc_forward_backward():
        x = images.clone().requires_grad_(True)
        disc(flow(x[:1], x[1:])).sum().backward()

    return [decode2_forward_backward, raft_disc_forward_backward, decode2_forward_backward_ckpt]


def parts(config: str, device: torch.device) -> dict:
    """The timed callables by name, on the ``config`` model at that config's video size (mid: 8 frames,
    128x128; tiny: 8 frames, 64x64; both VAEs down-sample 4x), in the order of ``PARTS``."""
    backbone = load_model(config, device)
    shape = bench_guidance.video_shape(config)
    f = backbone.vae_scale_factor
    latents = torch.randn(1, backbone.latent_channels, shape["frames"], shape["height"] // f, shape["width"] // f,
                          generator=torch.Generator().manual_seed(0))
    built = denoiser_parts(backbone, latents) + guidance_parts(backbone, shape, device)
    calls = {call.__name__: call for call in built}
    return {name: calls[name] for name in PARTS}


def time_parts(calls: dict, repeats: int) -> dict[str, list[float]]:
    """One warm-up call of each part, then ``repeats`` rounds of one timed call of each, interleaved."""
    for call in calls.values():
        call()
    runs: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            runs[name].append(time.perf_counter() - start)
    return runs


# ----------------------------------------------------------------------------- report


def print_report(rows: list[dict], model: dict[str, dict], guided: int) -> None:
    for row in rows:
        print(f"{row['part']:34s} {row['median_s']:.3f} s  {row['x_unguided_step']:.2f}x the unguided step")
    print(f"\nOne guided step per mode and the predicted video time over the unguided run "
          f"({guided} of {STEPS} steps guided); floor = the denoiser's calls alone:")
    for mode, m in model.items():
        print(f"{mode:14s} step {m['step_s']:.3f} s ({m['step_x_unguided']:.2f}x)  video {m['video_ratio']:.2f}x  "
              f"floor: step {m['floor_step_s']:.3f} s, video {m['floor_video_ratio']:.2f}x")
        for part, count in m["calls"]:
            print(f"    {count:2d} x {part:34s} {m['shares'][part]:6.1%}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per part (default 7)")
    parser.add_argument("--out", default="benchmarks/results", help="results folder")
    parser.add_argument("--smoke", action="store_true", help="tiny AnimateDiff at 8x64x64, 1 repeat (for tests)")
    args = parser.parse_args(argv)
    config, repeats = ("tiny", 1) if args.smoke else ("mid", args.repeats)
    torch.set_num_threads(args.threads)
    runs = time_parts(parts(config, torch.device("cpu")), repeats)
    medians = {name: statistics.median(v) for name, v in runs.items()}
    rows = [{"part": name, "median_s": medians[name], "x_unguided_step": medians[name] / medians[UNGUIDED],
             "all_s": v} for name, v in runs.items()]
    motion = bench_guidance.motion_config("fast")  # every mode: the paper's range and K
    start, stop = motion.resolved_opt_range(STEPS)
    k, n, guided = motion.iterations, bench_guidance.ROLLOUT_STEPS, stop - start
    model = predict(medians, k, n, STEPS, guided)
    print_report(rows, model, guided)
    result = {"config": config, "smoke": args.smoke, "device": "cpu", "threads": args.threads, "repeats": repeats,
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "rows": rows,
              "cost_model": {"steps": STEPS, "opt_range": [start, stop], "guided_steps": guided, "iterations": k,
                             "rollout_calls": n, "unguided_step": UNGUIDED, "modes": model}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "tiny-smoke" if args.smoke else config
    path = out / f"bench_step_parts_{name}_cpu_{args.threads}t.json"
    write_text_atomic(json.dumps(result, indent=2) + "\n", path)
    print(f"wrote {path}")
    return {**result, "json_path": str(path)}


if __name__ == "__main__":
    main()
