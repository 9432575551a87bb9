"""Where does the motion signal live? A per-step diagnostic to run before guiding a backbone.

MotionPrompt asks a flow discriminator D whether the clean-video estimate at sampling step i moves
like a real video (docs/design.md, "The method"). That question has an answer only where (a) the estimate
still carries the motion of the video it is heading to, and (b) D separates the estimates of real
videos from those of the model's own. Neither is guaranteed: in the toy world the one-step Tweedie
estimate at the paper-style early range carries almost no motion, and a D trained on finished videos
calls every early estimate fake. So, for each checked step i and each estimate (one-step Tweedie, or
an N-call rollout, :func:`mpcore.motionprompt.estimate_clean_frames`):

* **real clips**: encode the clip with the backbone's VAE, noise it to x_t with the backbone's own
  scheduler (``add_noise``, seeded), estimate the clean video exactly as guidance does (guided prompt
  with the learnable token at its init word, CFG, the guided frame pairs), decode the pairs and
  compare their flow with the clean clip's flow: cosine of the flattened flow fields, end-point
  error (EPE, px), and the ratio of mean flow magnitudes; D's logit on the estimate's flow;
* **the model's own trajectories**: sample the same caption (no guidance), and at the same steps
  estimate from the trajectory's x_t the same way; D's logit;
* **separation**: ROC-AUC of D's logits, real clips' estimates (positive) vs the model's own.

Reference rows: D on the clean clips' flows and on the model's finished videos, and the motion the
VAE itself keeps (the clean clip through encode/decode: the ceiling of any estimate).

:func:`recommend` turns this into a recommended estimate and ``opt_range``: the earliest contiguous
run of checked steps where the estimate's motion cosine is at least ``min_cosine`` and D's AUC at
least ``min_auc``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mpcore.config import MotionPromptConfig, SamplerConfig
from mpcore.interfaces import Backbone, Discriminator, FlowEstimator
from mpcore.motionprompt import MotionPrompt, estimate_clean_frames, pair_flow, select_frame_pairs
from mpcore.sampling import sample

MIN_COSINE = 0.3
"""Default: the estimate keeps at least this much of the true flow's direction (cosine)."""
MIN_AUC = 0.6
"""Default: D tells real clips' estimates from the model's own at least this well (ROC-AUC)."""
SCHEMA_VERSION = 1


@dataclass
class Clip:
    """A real video and its caption: frames (F, 3, H, W) in [-1, 1] at the sampler's size."""

    frames: torch.Tensor
    caption: str
    source: str = ""


def clip_from_uint8(frames: np.ndarray, caption: str, sampler: SamplerConfig, source: str = "") -> Clip:
    """uint8 (F, H, W, 3) -> a :class:`Clip` of the first ``sampler.frames`` frames resized to the
    sampler's height x width (bilinear, antialiased), in [-1, 1]."""
    if frames.shape[0] < sampler.frames:
        raise ValueError(f"{source or 'clip'} has {frames.shape[0]} frames; the sampler needs {sampler.frames}")
    video = torch.from_numpy(np.ascontiguousarray(frames[: sampler.frames])).permute(0, 3, 1, 2).float() / 127.5 - 1
    if tuple(video.shape[-2:]) != (sampler.height, sampler.width):
        video = F.interpolate(video, size=(sampler.height, sampler.width), mode="bilinear", antialias=True,
                              align_corners=False).clamp(-1, 1)
    return Clip(frames=video, caption=caption, source=source)


def roc_auc(positive: list[float] | np.ndarray, negative: list[float] | np.ndarray) -> float:
    """ROC-AUC = P(score of a positive > score of a negative), ties counting half (Mann-Whitney U)."""
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def flow_agreement(estimate: torch.Tensor, true: torch.Tensor) -> dict[str, list[float]]:
    """Per pair: cosine of the flattened flow fields, mean end-point error (px), and the ratio of mean
    flow magnitudes (estimate / true)."""
    est, ref = estimate.flatten(1).double(), true.flatten(1).double()
    cosine = F.cosine_similarity(est, ref, dim=1, eps=1e-12)
    epe = (estimate - true).double().norm(dim=1).flatten(1).mean(dim=1)
    ratio = estimate.double().norm(dim=1).flatten(1).mean(dim=1) / true.double().norm(dim=1).flatten(1).mean(dim=1).clamp_min(1e-12)
    return {"cosine": cosine.tolist(), "epe": epe.tolist(), "magnitude_ratio": ratio.tolist()}


class TrajectoryRecorder:
    """A guidance object that changes nothing and keeps x_t of the chosen steps (the model's own trajectory)."""

    def __init__(self, steps: list[int]):
        self.steps = set(steps)
        self.latents: dict[int, torch.Tensor] = {}

    def prepare(self, backbone, prompt, config, scheduler) -> None:
        self.latents = {}

    def condition(self, step, t, latents, cond, uncond):
        if step in self.steps:
            self.latents[step] = latents.detach().clone()
        return None

    def finish(self) -> dict[str, Any]:
        return {}


def parse_estimates(text: str) -> dict[str, int]:
    """``"tweedie,rollout2,rollout4"`` -> ``{"tweedie": 1, "rollout2": 2, "rollout4": 4}`` (name -> model calls)."""
    estimates: dict[str, int] = {}
    for name in (part.strip() for part in text.split(",")):
        if name == "tweedie":
            estimates[name] = 1
        elif name.startswith("rollout") and name[len("rollout"):].isdigit() and int(name[len("rollout"):]) >= 1:
            estimates[name] = int(name[len("rollout"):])
        else:
            raise ValueError(f"unknown estimate {name!r}: use tweedie or rolloutN (N model calls, e.g. rollout3)")
    if not estimates:
        raise ValueError("no estimate given: e.g. tweedie,rollout3")
    return estimates


def estimate_config(name: str, calls: int) -> dict[str, Any]:
    """The MotionPrompt settings (``-o``) that select an estimate."""
    return {"estimate": "tweedie"} if calls == 1 and name == "tweedie" else {"estimate": "rollout", "rollout_steps": calls}


@torch.no_grad()
def _check_diagnosable(backbone: Backbone, sampler: SamplerConfig, motion: MotionPromptConfig, steps: list[int],
                       pairs_per_clip: int | None) -> int:
    """Refuse what :func:`diagnose_steps` cannot measure; return the frame pairs per clip."""
    if backbone.temporal_compression > 1:
        raise ValueError(f"mpcore diagnose measures per-frame estimates; backbone {backbone.name!r} has a causal video "
                         f"VAE compressing time {backbone.temporal_compression}x, which it does not support yet")
    num_pairs = pairs_per_clip or max(1, motion.decoded_frames // 2)
    if 2 * num_pairs > sampler.frames:
        raise ValueError(f"{num_pairs} frame pairs do not fit in {sampler.frames} frames")
    if any(not 0 <= s < sampler.steps for s in steps):
        raise ValueError(f"steps must lie in [0, {sampler.steps}); got {steps}")
    return num_pairs


@torch.no_grad()
def diagnose_steps(
    backbone: Backbone,
    clips: list[Clip],
    flow_estimator: FlowEstimator,
    discriminator: Discriminator,
    sampler: SamplerConfig,
    motion: MotionPromptConfig,
    steps: list[int],
    estimates: dict[str, int],
    seed: int = 0,
    pairs_per_clip: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure, per checked step and estimate, the motion the estimate keeps and D's verdicts (module
    docstring). Clip k is sampled with seed ``seed + k`` and noised with a generator seeded likewise.
    Returns a JSON-ready dict (``per_step[estimate][step]`` with means and raw values). Runs without
    autograd: it only measures (the guided prompt's token is a parameter, so estimates would otherwise
    build a graph each)."""
    from tqdm.auto import tqdm

    num_pairs = _check_diagnosable(backbone, sampler, motion, steps, pairs_per_clip)
    # the guided prompt only (its token at the init word): the guidance decoder plays no part here, every
    # estimate is decoded through the backbone's own VAE
    motion = dataclasses.replace(motion, guidance_decoder="full", guidance_decoder_path=None)
    raw = {name: {s: {"cosine": [], "epe": [], "magnitude_ratio": [], "logit_real": [], "logit_own": []} for s in steps}
           for name in estimates}
    reference = {"logit_real_clean": [], "logit_own_finished": [], "vae_cosine": [], "vae_epe": [],
                 "true_flow_magnitude": [], "own_finished_flow_magnitude": []}

    bar = tqdm(clips, desc="diagnose", disable=not progress, unit="clip")
    for k, clip in enumerate(bar):
        clip_sampler = dataclasses.replace(sampler, seed=seed + k)
        scheduler = backbone.make_scheduler()
        scheduler.set_timesteps(sampler.steps, device=backbone.device)
        schedule = backbone.noise_schedule(scheduler)
        # the model's own trajectory first: sample() encodes the plain prompt, before any token exists
        recorder = TrajectoryRecorder(steps)
        final = sample(backbone, clip.caption, clip_sampler, recorder, progress=False).latents

        # the condition guidance uses: the guided prompt with the token at its init word
        guidance = MotionPrompt(motion, flow_estimator, discriminator)
        guidance.prepare(backbone, clip.caption, clip_sampler, scheduler)
        backbone.prepare_sampling(clip_sampler)
        cond = backbone.encode_prompt([guidance.guided_prompt], guidance.override())
        uncond = backbone.encode_negative_prompt([sampler.negative_prompt]) if sampler.cfg_scale > 1.0 else cond
        pairs = select_frame_pairs(sampler.frames, num_pairs, torch.Generator().manual_seed(seed + k))
        frame_index = [f for pair in pairs for f in pair]

        frames = clip.frames.to(backbone.device)
        true_flow = pair_flow(flow_estimator, frames[frame_index].float(), motion.flow_size)
        latents0 = backbone.encode(frames.to(backbone.dtype)).permute(1, 0, 2, 3).unsqueeze(0)  # (1, C, F, h, w)
        reconstructed = backbone.decode(latents0[0].permute(1, 0, 2, 3)[frame_index]).float()
        vae = flow_agreement(pair_flow(flow_estimator, reconstructed, motion.flow_size), true_flow)
        reference["vae_cosine"] += vae["cosine"]
        reference["vae_epe"] += vae["epe"]
        reference["true_flow_magnitude"] += true_flow.norm(dim=1).flatten(1).mean(dim=1).tolist()
        reference["logit_real_clean"] += discriminator(true_flow).float().tolist()
        own_final = backbone.decode(final[0].permute(1, 0, 2, 3)[frame_index] / backbone.latent_scale(0)).float()
        own_final_flow = pair_flow(flow_estimator, own_final, motion.flow_size)
        reference["logit_own_finished"] += discriminator(own_final_flow).float().tolist()
        reference["own_finished_flow_magnitude"] += own_final_flow.norm(dim=1).flatten(1).mean(dim=1).tolist()

        noise_generator = torch.Generator(device=backbone.device).manual_seed(seed + k)
        noise = torch.randn(latents0.shape, generator=noise_generator, device=backbone.device).to(backbone.dtype)
        for step in steps:
            t = scheduler.timesteps[step]
            # the real clip on the sampler's trajectory: noised to t as in training (the backbone's own rule)
            x_real = schedule.diffuse(latents0 * backbone.latent_scale(0), noise, int(t)).to(latents0.dtype)
            for name, calls in estimates.items():
                for kind, x_t in (("real", x_real), ("own", recorder.latents[step])):
                    x0 = estimate_clean_frames(backbone, schedule, x_t, step, cond, uncond, sampler.cfg_scale,
                                               frame_index, calls).frames
                    images = backbone.decode(x0.to(backbone.dtype)).float()
                    flow = pair_flow(flow_estimator, images, motion.flow_size)
                    raw[name][step][f"logit_{kind}"] += discriminator(flow).float().tolist()
                    if kind == "real":
                        for key, values in flow_agreement(flow, true_flow).items():
                            raw[name][step][key] += values
    bar.close()
    return summarize(raw, reference, steps, estimates, sampler, motion, len(clips), num_pairs, seed)


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def summarize(raw, reference, steps, estimates, sampler, motion, num_clips, num_pairs, seed) -> dict[str, Any]:
    per_step: dict[str, list[dict[str, Any]]] = {}
    for name in estimates:
        rows = []
        for step in steps:
            values = raw[name][step]
            rows.append({
                "step": step,
                "motion_cosine": _mean(values["cosine"]),
                "epe": _mean(values["epe"]),
                "magnitude_ratio": _mean(values["magnitude_ratio"]),
                "logit_real": _mean(values["logit_real"]),
                "logit_own": _mean(values["logit_own"]),
                "auc": roc_auc(values["logit_real"], values["logit_own"]),
                "values": values,
            })
        per_step[name] = rows
    finished_auc = roc_auc(reference["logit_real_clean"], reference["logit_own_finished"])
    return {
        "schema_version": SCHEMA_VERSION,
        "clips": num_clips,
        "pairs_per_clip": num_pairs,
        "seed": seed,
        "sampler": dataclasses.asdict(sampler),
        "guidance_settings": dataclasses.asdict(motion),
        "checked_steps": list(steps),
        "estimates": dict(estimates),
        "reference": {
            "logit_real_clean": _mean(reference["logit_real_clean"]),
            "logit_own_finished": _mean(reference["logit_own_finished"]),
            "auc_finished": finished_auc,
            "vae_motion_cosine": _mean(reference["vae_cosine"]),
            "vae_epe": _mean(reference["vae_epe"]),
            "true_flow_magnitude": _mean(reference["true_flow_magnitude"]),
            "own_finished_flow_magnitude": _mean(reference["own_finished_flow_magnitude"]),
            "values": reference,
        },
        "per_step": per_step,
    }


def recommend(result: dict[str, Any], min_cosine: float = MIN_COSINE, min_auc: float = MIN_AUC,
              max_length: int | None = None) -> dict[str, Any]:
    """The recommended estimate and ``opt_range`` (half-open step indices).

    A checked step qualifies for an estimate if its mean motion cosine >= ``min_cosine`` and D's AUC
    >= ``min_auc``. Per estimate, the candidate range is the earliest run of consecutive checked
    steps that qualify (cut to ``max_length`` steps); the earliest-starting candidate wins (earlier
    steps decide more of the motion), ties going to fewer model calls, then to the longer run.
    Returns ``{"estimate", "calls", "opt_range", "settings", "reason", "qualifying"}``;
    ``opt_range`` is None when no step qualifies.
    """
    checked = result["checked_steps"]
    candidates = []
    qualifying: dict[str, list[int]] = {}
    for name, calls in result["estimates"].items():
        good = [row["step"] for row in result["per_step"][name]
                if row["motion_cosine"] is not None and row["motion_cosine"] >= min_cosine
                and math.isfinite(row["auc"]) and row["auc"] >= min_auc]
        qualifying[name] = good
        if not good:
            continue
        run = [good[0]]
        for step in good[1:]:
            if checked.index(step) == checked.index(run[-1]) + 1:
                run.append(step)
            else:
                break
        start = run[0]
        # the range covers up to the next checked step after the run (the steps in between were not measured)
        after = checked.index(run[-1]) + 1
        stop = checked[after] if after < len(checked) and len(run) > 1 else run[-1] + 1
        stop = min(stop, result["sampler"]["steps"])
        if max_length is not None:
            stop = min(stop, start + max_length)
        candidates.append((start, calls, -(stop - start), name, (start, stop)))
    criteria = f"motion cosine >= {min_cosine} and discriminator AUC >= {min_auc}"
    if not candidates:
        return {"estimate": None, "calls": None, "opt_range": None, "settings": None, "qualifying": qualifying,
                "reason": f"no checked step has {criteria} for any estimate: the discriminator has nothing there "
                          "that guidance could act on (see the plot: is it the estimate or the discriminator?)"}
    start, calls, _, name, opt_range = min(candidates)
    settings = {**estimate_config(name, calls), "opt_range": f"{opt_range[0]},{opt_range[1]}"}
    return {"estimate": name, "calls": calls, "opt_range": list(opt_range), "settings": settings,
            "qualifying": qualifying,
            "reason": f"earliest run of checked steps with {criteria} ({name}, {calls} model call(s) per estimate)"}


def plot(result: dict[str, Any], recommendation: dict[str, Any], out_png: str | Path, title: str = "") -> Path:
    """Two panels over the sampling steps: motion kept by each estimate (cosine to the true flow), and
    D's mean logit on real clips' vs the model's own estimates with their AUC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mpcore.io.files import atomic_path

    fig, (ax_motion, ax_logit) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ref = result["reference"]
    ax_ratio = ax_motion.twinx()
    ax_ratio.set_yscale("log")
    ax_ratio.set_ylabel("|estimate flow| / |true flow| (dotted, log)")
    for i, (name, rows) in enumerate(result["per_step"].items()):
        color = colors[i % len(colors)]
        steps = [r["step"] for r in rows]
        ax_motion.plot(steps, [np.nan if r["motion_cosine"] is None else r["motion_cosine"] for r in rows], "o-",
                       color=color, label=f"{name}: cosine")
        ax_ratio.plot(steps, [np.nan if r["magnitude_ratio"] is None else r["magnitude_ratio"] for r in rows], ":",
                      color=color)
        ax_logit.plot(steps, [np.nan if r["logit_real"] is None else r["logit_real"] for r in rows], "o-", color=color,
                      label=f"{name}: real clips")
        ax_logit.plot(steps, [np.nan if r["logit_own"] is None else r["logit_own"] for r in rows], "x--", color=color,
                      label=f"{name}: model's own")
    if ref["vae_motion_cosine"] is not None:
        ax_motion.axhline(ref["vae_motion_cosine"], color="grey", lw=0.8, label="VAE round trip (ceiling)")
    ax_motion.axhline(0, color="black", lw=0.5)
    for value, style, label in ((ref["logit_real_clean"], "-", "real clips, clean"),
                                (ref["logit_own_finished"], "--", "model, finished")):
        if value is not None:
            ax_logit.axhline(value, color="grey", ls=style, lw=0.8, label=label)
    ax_auc = ax_logit.twinx()
    for i, (name, rows) in enumerate(result["per_step"].items()):
        ax_auc.plot([r["step"] for r in rows], [r["auc"] for r in rows], color=colors[i % len(colors)], alpha=0.35, lw=3)
    ax_auc.set_ylim(0, 1)
    ax_auc.set_ylabel("AUC real vs own (thick, faint)")
    if recommendation.get("opt_range"):
        for ax in (ax_motion, ax_logit):
            ax.axvspan(recommendation["opt_range"][0] - 0.5, recommendation["opt_range"][1] - 0.5, color="green", alpha=0.08)
    ax_motion.set_xlabel("sampling step (0 = noisiest)")
    ax_motion.set_ylabel("estimate's flow vs true flow")
    ax_motion.set_title("motion kept by the estimate (real clips)")
    ax_logit.set_xlabel("sampling step (0 = noisiest)")
    ax_logit.set_ylabel("discriminator logit (higher = real)")
    ax_logit.set_title("discriminator on the estimates")
    ax_motion.legend(fontsize=7)
    ax_logit.legend(fontsize=7, loc="lower right")
    fig.suptitle(title or f"mpcore diagnose steps: {result['clips']} clips; recommended: "
                          f"{recommendation.get('estimate')} {recommendation.get('opt_range')}", fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_png


# ----------------------------------------------------------------------------- the gate


def term_drops(result: dict[str, Any], term: str = "disc") -> dict[str, Any]:
    """One guided video's drops of its loss ``term`` (see :func:`gate`): ``over_iterations`` (mean over its
    optimized steps, from the probe where recorded) and ``over_range``; None where its trace cannot tell.
    ``sources``: where the iteration drops came from ('probe', 'iterations')."""
    steps = [e for e in result.get("trace", []) if e.get("optimized")]
    drops, sources = [], set()
    for entry in steps:
        if "probe" in entry:
            sources.add("probe")
            drops.append(entry["probe"][f"{term}_before"] - entry["probe"][f"{term}_after"])
            continue
        sources.add("iterations")
        values = [r[term] for r in entry.get("iterations", []) if not r.get("skipped") and math.isfinite(r[term])]
        if len(values) >= 2:
            drops.append(values[0] - values[-1])
    first = [r[term] for r in steps[0]["iterations"] if not r.get("skipped")] if steps else []
    last = [r[term] for r in steps[-1]["iterations"] if not r.get("skipped")] if steps else []
    over_range = first[0] - last[-1] if first and last and len(steps) > 1 else None
    return {"over_iterations": float(np.mean(drops)) if drops else None, "over_range": over_range, "sources": sources}


def gate(results: list[dict[str, Any]], term: str = "disc", seed: int = 0, resamples: int = 10000) -> dict[str, Any]:
    """Does guidance lower its loss ``term`` (the guidance spec's ``gate``; MotionPrompt's: ``disc``, the
    discriminator term) where it runs? From guided runs' traces
    (``MotionPrompt.finish()``: the manifest's ``result``), two paired drops, each with a 95%
    bootstrap CI over videos:

    * ``over_iterations``: per video, the mean over optimized steps of the term's drop over the step's
      K updates. With the probe (``-o probe_pairs=N``) it is measured on the same held-out frame pairs
      before and after the updates (``source: "probe"``); without it, disc(first iteration) -
      disc(last iteration), whose frame pairs differ (``source: "iterations"``: far noisier, as
      the term varies more between pairs than K updates move it);
    * ``over_range``: per video, disc at the first iteration of the first optimized step minus disc at
      the last iteration of the last one (the trajectory moves too: this is what the video gets).

    Skipped iterations are left out. ``passed`` is true when both drops are positive with CIs above 0.
    """
    from mpcore.analysis.compare import bootstrap_ci

    per_iteration, per_range = [], []
    sources: set[str] = set()
    for result in results:
        drops = term_drops(result, term)
        sources.update(drops["sources"])
        if drops["over_iterations"] is not None:
            per_iteration.append(drops["over_iterations"])
        if drops["over_range"] is not None:
            per_range.append(drops["over_range"])

    def summary(values: list[float]) -> dict[str, Any]:
        if not values:
            return {"n": 0, "mean_drop": None, "ci": None}
        return {"n": len(values), "mean_drop": float(np.mean(values)), "ci": list(bootstrap_ci(np.asarray(values), seed, resamples)),
                "values": values}

    iterations, over_range = summary(per_iteration), summary(per_range)
    passed = all(s["ci"] is not None and s["ci"][0] > 0 for s in (iterations, over_range))
    iterations["source"] = " + ".join(sorted(sources)) or None
    return {"over_iterations": iterations, "over_range": over_range, "passed": passed}
