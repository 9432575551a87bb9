#!/usr/bin/env python
"""What ``-o guidance_decoder=tiny`` costs in fidelity, and what it saves in decode time.

MotionPrompt's loss decodes the guided frames of the clean-video estimate, runs the flow estimator on
them and the discriminator on the flows. With ``guidance_decoder=tiny`` a diffusers ``AutoencoderTiny``
decodes them instead of the backbone's VAE. This script samples guided videos the usual way (the full
VAE in the loss: today's trajectories), records every estimate MotionPrompt decodes (latents of the
guided frames, VAE latent scale undone), and decodes each twice, full and tiny, then compares:

* **flow EPE**: mean end-point error between the flows of the two decodes (pixels), next to the mean
  flow magnitude of the full decode's flow (the scale of the motion);
* **discriminator**: the logit on the tiny decode's flow minus the logit on the full decode's
  (signed and absolute);
* **gradient cosine**: cosine between the gradients of the loss's flow terms (l_disc softplus(-D) +
  l_tv TV) w.r.t. the estimate's latents through each decoder (does the token get pushed the same way?),
  and its two factors: the cosine between the loss's gradients w.r.t. the two decoded images (how much
  the flow loss's gradient changes with the small image difference) and the cosine between the two
  decoders' vector-Jacobian products of the same image gradient (how alike the decoders' Jacobians are),
  with a reference for the first: the full decode against itself plus Gaussian noise of the same RMS;
* **image**: mean absolute difference (grey levels of 255) and PSNR of the two decodes;
* **time**: decode forward + backward of the guided frames, tiny / full (checkpointing as configured,
  ``checkpoint_vae``), median of interleaved repeats.

Each guided video (prompt x seed) is one unit: its measures are averaged over its decodes, then the
mean over videos gets a 95% t confidence interval.

    python benchmarks/bench_tiny_decoder.py                          # toy model + its bundled tiny decoder
    python benchmarks/bench_tiny_decoder.py --decoder /models/taesd --backbone animatediff \\
        --model /models/sd15 --backbone-option motion_adapter=/models/mm --discriminator disc.safetensors \\
        --flow raft --flow-weights raft-things.pth --tag taesd   # TAESD on a real SD-family backbone
    python benchmarks/bench_tiny_decoder.py --smoke                  # a few seconds (tests)

``--arch-timing SIZE`` adds the decode fwd+bwd time of the real architectures at SIZE x SIZE with random
weights (SD's AutoencoderKL decoder vs TAESD's AutoencoderTiny; timing does not depend on weight values).
Writes ``<out>/bench_tiny_decoder[_<tag>].json`` and ``.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mpcore import losses  # noqa: E402
from mpcore.io.files import write_text_atomic  # noqa: E402
from mpcore.motionprompt import MotionPrompt, pair_flow  # noqa: E402
from mpcore.toy import world as toyworld  # noqa: E402

PROMPT_SEED = 7_500_000  # held-out toy scenes (training 1_000_000+, disc 3_000_000+, bench_effect 7_000_000+)


class RecordingMotionPrompt(MotionPrompt):
    """MotionPrompt (full VAE in the loss) that keeps every estimate it decodes: (step, latents)."""

    def prepare(self, *args, **kwargs):
        super().prepare(*args, **kwargs)
        self.recorded: list[tuple[int, torch.Tensor]] = []

    def condition(self, step, t, latents, cond, uncond):
        self.current_step = step
        return super().condition(step, t, latents, cond, uncond)

    def decode_frames(self, x0_frames):
        self.recorded.append((self.current_step, x0_frames.detach().clone()))
        return super().decode_frames(x0_frames)


def mean_ci(values: list[float]) -> dict[str, float | int | None]:
    """Mean and 95% t confidence interval over units."""
    from scipy import stats

    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "ci95": None, "n": n}
    half = float(stats.t.ppf(0.975, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": n}


def flow_terms(flow_estimator, discriminator, motion, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flows of the decoded pairs, the discriminator's logits, and the loss's flow terms."""
    flow = pair_flow(flow_estimator, images, motion.flow_size)
    logits = discriminator(flow)
    loss = motion.l_disc * losses.adversarial(logits) + motion.l_tv * losses.total_variation(flow)
    return flow, logits, loss


def compare_decodes(models, motion, x0: torch.Tensor) -> dict[str, float]:
    """Full vs tiny decode of one recorded estimate: flow EPE, logits, gradient cosine, image difference."""
    backbone, tiny = models.backbone, models.guidance.decoder
    result: dict[str, Any] = {}
    grads, flows, logits, images = {}, {}, {}, {}
    for name in ("full", "tiny"):
        x = x0.clone().requires_grad_(True)
        with torch.enable_grad():
            decoded = (backbone.decode(x.to(backbone.dtype)) if name == "full" else tiny(x)).float()
            flow, logit, loss = flow_terms(models.guidance.flow_estimator, models.guidance.discriminator, motion, decoded)
            (grad,) = torch.autograd.grad(loss, x)
        grads[name], flows[name], logits[name], images[name] = grad.flatten(), flow.detach(), logit.detach(), decoded.detach()
    # the total gradient's two factors: the loss's gradient w.r.t. the images (at each decode), and each
    # decoder's vector-Jacobian product of one image-space cotangent (the full decode's image gradient)
    image_grads = {}
    for name in ("full", "tiny"):
        image = images[name].clone().requires_grad_(True)
        with torch.enable_grad():
            (image_grads[name],) = torch.autograd.grad(flow_terms(models.guidance.flow_estimator, models.guidance.discriminator, motion,
                                                                  image)[2], image)
    vjps = {}
    for name in ("full", "tiny"):
        x = x0.clone().requires_grad_(True)
        with torch.enable_grad():
            decoded = (backbone.decode(x.to(backbone.dtype)) if name == "full" else tiny(x)).float()
            (vjps[name],) = torch.autograd.grad(decoded, x, image_grads["full"])
    # reference for factor 1: the same, the full decode against the full decode plus Gaussian noise of the
    # difference's RMS (how much any image change of that size turns the flow loss's gradient)
    generator = torch.Generator().manual_seed(int(x0.numel()))
    rms = (images["tiny"] - images["full"]).square().mean().sqrt()
    noisy = (images["full"] + rms * torch.randn(images["full"].shape, generator=generator).to(x0.device)).requires_grad_(True)
    with torch.enable_grad():
        (noisy_grad,) = torch.autograd.grad(flow_terms(models.guidance.flow_estimator, models.guidance.discriminator, motion, noisy)[2], noisy)
    cosine = torch.nn.functional.cosine_similarity
    result["image_grad_cosine"] = float(cosine(image_grads["full"].flatten(), image_grads["tiny"].flatten(), dim=0))
    result["image_grad_cosine_noise_ref"] = float(cosine(image_grads["full"].flatten(), noisy_grad.flatten(), dim=0))
    result["decoder_vjp_cosine"] = float(cosine(vjps["full"].flatten(), vjps["tiny"].flatten(), dim=0))
    epe = (flows["full"] - flows["tiny"]).norm(dim=1).mean()
    result["flow_epe"] = float(epe)
    result["flow_magnitude_full"] = float(flows["full"].norm(dim=1).mean())
    result["logit_full"] = float(logits["full"].mean())
    result["logit_diff"] = float((logits["tiny"] - logits["full"]).mean())
    result["logit_abs_diff"] = float((logits["tiny"] - logits["full"]).abs().mean())
    result["grad_cosine"] = float(torch.nn.functional.cosine_similarity(grads["full"], grads["tiny"], dim=0))
    full01, tiny01 = (images["full"].clamp(-1, 1) + 1) / 2, (images["tiny"].clamp(-1, 1) + 1) / 2
    result["image_mad_255"] = float((full01 - tiny01).abs().mean() * 255)
    result["image_psnr_db"] = float(10 * torch.log10(1 / (full01 - tiny01).square().mean().clamp_min(1e-12)))
    return result


def time_decoders(models, motion, x0: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median forward + backward time of decoding the guided frames, full vs tiny, interleaved."""
    backbone, tiny = models.backbone, models.guidance.decoder
    decoders = {"full": lambda x: backbone.decode(x.to(backbone.dtype), checkpoint=motion.checkpoint_vae),
                "tiny": lambda x: tiny(x, checkpoint=motion.checkpoint_vae)}
    times: dict[str, list[float]] = {name: [] for name in decoders}
    for k in range(repeats + 2):
        for name, decode in decoders.items():
            x = x0.clone().requires_grad_(True)
            start = time.perf_counter()
            with torch.enable_grad():
                decode(x).float().square().mean().backward()
            if x0.device.type == "cuda":
                torch.cuda.synchronize()
            if k >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - start)
    full, small = statistics.median(times["full"]), statistics.median(times["tiny"])
    return {"full_ms": 1000 * full, "tiny_ms": 1000 * small, "ratio_tiny_full": small / full, "repeats": repeats,
            "frames": int(x0.shape[0]), "checkpoint_vae": motion.checkpoint_vae}


def time_architectures(size: int, frames: int, repeats: int, device: torch.device) -> dict[str, Any]:
    """Decode fwd+bwd of ``frames`` frames at ``size`` px: SD's VAE (AutoencoderKL, SD-1.5 config) frame by frame
    with per-block checkpointing, as backbones decode, vs TAESD (AutoencoderTiny defaults), random weights."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    from mpcore.vae import TinyDecoder, decode_frames

    torch.manual_seed(0)
    sd_vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                           norm_num_groups=32, scaling_factor=0.18215).to(device).requires_grad_(False)
    taesd = TinyDecoder(AutoencoderTiny().to(device).requires_grad_(False), 0.18215)
    x0 = torch.randn(frames, 4, size // 8, size // 8, device=device)
    decoders = {"full": lambda x: decode_frames(sd_vae, x, checkpoint=True), "tiny": lambda x: taesd(x, checkpoint=True)}
    times: dict[str, list[float]] = {name: [] for name in decoders}
    for k in range(repeats + 1):
        for name, decode in decoders.items():
            x = x0.clone().requires_grad_(True)
            start = time.perf_counter()
            decode(x).float().square().mean().backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if k >= 1:
                times[name].append(time.perf_counter() - start)
    full, small = statistics.median(times["full"]), statistics.median(times["tiny"])
    return {"size": size, "frames": frames, "full_ms": 1000 * full, "tiny_ms": 1000 * small,
            "ratio_tiny_full": small / full, "repeats": repeats,
            "full_decoder_parameters": sum(p.numel() for p in sd_vae.decoder.parameters()),
            "tiny_decoder_parameters": sum(p.numel() for p in taesd.model.decoder.parameters())}


def toy_prompts(count: int) -> list[str]:
    """Captions of held-out toy-world scenes (combinations the toy model never saw)."""
    return [toyworld.sample_scene(PROMPT_SEED + k, split="heldout").caption for k in range(count)]


def run_options(args: dict[str, Any], overrides: list[str]):
    """``mpcore run``'s options (:class:`mpcore.jobs.options.RunOptions`) for :func:`mpcore.jobs.setup.prepare`."""
    from mpcore.jobs.options import RunOptions

    backbone_options = {}
    for text in args["backbone_option"]:
        key, value = text.split("=", 1)
        backbone_options[key.replace("-", "_")] = value
    return RunOptions(backbone=args["backbone"], model=args["model"], steps=args["steps"], flow=args["flow"],
                      flow_weights=args["flow_weights"], discriminator=args["discriminator"],
                      overrides=tuple(overrides), device=args["device"], progress=False,
                      backbone_options=backbone_options)


def motion_of(setup):
    """The run's MotionPrompt settings as its videos use them (resolved for its sampler)."""
    return setup.guidance.resolve_for(setup.sampler, setup.backbone)


def markdown(summary: dict[str, Any]) -> str:
    def fmt(entry: dict[str, Any], digits: int = 3) -> str:
        mean, ci = entry["mean"], entry["ci95"]
        return f"{mean:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")

    m, t = summary["measures"], summary["timing"]
    lines = [
        f"# Tiny guidance decoder vs the full VAE ({summary['created']})", "",
        f"backbone {summary['backbone']} / model {summary['model']}; tiny decoder `{summary['decoder']['path']}` "
        f"({summary['decoder']['decoder_parameters']} decoder parameters); flow `{summary['flow']}`; "
        f"{summary['videos']} guided videos ({len(summary['prompts'])} prompts x seeds {summary['seeds']}), "
        f"{summary['decodes']} recorded estimates; {summary['device']}, torch {summary['versions']['torch']}, "
        f"diffusers {summary['versions']['diffusers']}, git {summary['git']}", "",
        "Mean over videos [95% CI]; each video's value is the mean over its decoded estimates.", "",
        "| measure | value |", "|---|---|",
        f"| flow EPE, full vs tiny decode (px) | {fmt(m['flow_epe'])} |",
        f"| mean flow magnitude, full decode (px) | {fmt(m['flow_magnitude_full'])} |",
        f"| discriminator logit, full decode | {fmt(m['logit_full'])} |",
        f"| logit difference, tiny - full | {fmt(m['logit_diff'])} |",
        f"| logit absolute difference | {fmt(m['logit_abs_diff'])} |",
        f"| cosine of the loss gradients w.r.t. the latents | {fmt(m['grad_cosine'])} |",
        f"| - its factor 1: cosine of the loss gradients w.r.t. the two decoded images | {fmt(m['image_grad_cosine'])} |",
        f"| - reference for factor 1: full decode vs full decode + Gaussian noise of the same RMS | "
        f"{fmt(m['image_grad_cosine_noise_ref'])} |",
        f"| - its factor 2: cosine of the decoders' VJPs of one image gradient | {fmt(m['decoder_vjp_cosine'])} |",
        f"| image mean abs difference (of 255) | {fmt(m['image_mad_255'], 2)} |",
        f"| image PSNR, tiny vs full (dB) | {fmt(m['image_psnr_db'], 2)} |",
        f"| decode fwd+bwd of the {t['frames']} guided frames, full (ms) | {t['full_ms']:.1f} |",
        f"| same, tiny (ms) | {t['tiny_ms']:.1f} |",
        f"| **time ratio tiny / full** | **{t['ratio_tiny_full']:.3f}** |", "",
    ]
    if summary.get("by_step"):
        lines += ["By sampling step (mean over videos):", "", "| step | flow EPE (px) | flow magnitude (px) | logit diff | grad cosine |",
                  "|---|---|---|---|---|"]
        for step, row in summary["by_step"].items():
            lines.append(f"| {step} | {row['flow_epe']:.3f} | {row['flow_magnitude_full']:.3f} | {row['logit_diff']:+.3f} | "
                         f"{row['grad_cosine']:.3f} |")
        lines.append("")
    arch = summary.get("arch_timing")
    if arch:
        lines += [f"Real architectures, random weights, {arch['frames']} frames at {arch['size']}x{arch['size']} "
                  f"(SD VAE decoder frame by frame, per-block checkpointing, vs TAESD): full {arch['full_ms']:.0f} ms, "
                  f"tiny {arch['tiny_ms']:.0f} ms, ratio **{arch['ratio_tiny_full']:.3f}**.", ""]
    return "\n".join(lines)


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--decoder", default=None, help="AutoencoderTiny folder or hub id (default: the backbone's default for the model).")
@click.option("--backbone", default="animatediff", show_default=True)
@click.option("--model", default="toy", show_default=True)
@click.option("--backbone-option", multiple=True, metavar="KEY=VALUE", help="A backbone's own run option, e.g. motion_adapter=PATH.")
@click.option("--flow", default=None, help="Flow estimator (default: the model's, tvl1_fast for the toy).")
@click.option("--flow-weights", default=None)
@click.option("--discriminator", default=None, help="Default: the model's bundled one (toy).")
@click.option("--prompts", "n_prompts", default=4, show_default=True, help="Held-out toy prompts (toy model).")
@click.option("--prompt", "prompt_list", multiple=True, help="Prompts to use instead of toy prompts (repeatable).")
@click.option("--seeds", default="0,1", show_default=True)
@click.option("--steps", type=int, default=None)
@click.option("-o", "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="MotionPrompt setting.")
@click.option("--repeats", default=20, show_default=True, help="Timed decode repeats.")
@click.option("--arch-timing", type=int, default=None, metavar="SIZE", help="Also time SD VAE vs TAESD at SIZE px.")
@click.option("--device", default=None)
@click.option("--threads", type=int, default=None, help="torch intra-op threads.")
@click.option("--tag", default=None, help="Output name suffix.")
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "benchmarks" / "results", show_default=True)
@click.option("--smoke", is_flag=True, help="Tiny configuration: 1 prompt, 1 seed, 4 steps, 3 repeats (tests).")
def main(decoder, backbone, model, backbone_option, flow, flow_weights, discriminator, n_prompts, prompt_list, seeds,
         steps, overrides, repeats, arch_timing, device, threads, tag, out, smoke):
    from mpcore.io.manifest import package_versions
    from mpcore.jobs.setup import load, prepare
    from mpcore.sampling import sample

    if threads:
        torch.set_num_threads(threads)
    overrides = list(overrides) + ["guidance_decoder=tiny"] + ([f"guidance_decoder_path={decoder}"] if decoder else [])
    seed_list = [int(s) for s in seeds.split(",")]
    if smoke:
        n_prompts, seed_list, steps, repeats = 1, [0], steps or 4, 3
        overrides += ["opt_range=1,3", "iterations=1"]
    args = dict(backbone=backbone, model=model, flow=flow, flow_weights=flow_weights, discriminator=discriminator,
                device=device, steps=steps, backbone_option=backbone_option)
    setup = prepare(run_options(args, overrides))
    models = load(setup)
    motion_full = dataclasses.replace(motion_of(setup), guidance_decoder="full", guidance_decoder_path=None)
    prompts = list(prompt_list) or toy_prompts(n_prompts)

    per_video, by_step, first_x0 = [], {}, None
    start = time.perf_counter()
    for prompt in prompts:
        for seed in seed_list:
            sampler = dataclasses.replace(setup.sampler, seed=seed)
            guidance = RecordingMotionPrompt(motion_full, models.guidance.flow_estimator, models.guidance.discriminator)
            sample(models.backbone, prompt, sampler, guidance, progress=False)
            rows = []
            for step, x0 in guidance.recorded:
                first_x0 = x0 if first_x0 is None else first_x0
                row = compare_decodes(models, motion_of(setup), x0)
                rows.append(row)
                by_step.setdefault(step, []).append(row)
            per_video.append({name: statistics.fmean(r[name] for r in rows) for name in rows[0]}
                             | {"prompt": prompt, "seed": seed, "decodes": len(rows)})
            print(f"{prompt!r} seed {seed}: EPE {per_video[-1]['flow_epe']:.3f} px, logit diff "
                  f"{per_video[-1]['logit_diff']:+.3f}, grad cos {per_video[-1]['grad_cosine']:.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    names = [k for k in per_video[0] if k not in ("prompt", "seed", "decodes")]
    timing = time_decoders(models, motion_of(setup), first_x0, repeats)
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    summary = {
        "created": time.strftime("%Y-%m-%d"),
        "backbone": backbone, "model": model, "decoder": models.guidance.decoder_info,
        "flow": models.guidance.flow_info.get("name") if models.guidance.flow_info else None,
        "discriminator": (models.guidance.discriminator_info or {}).get("path"),
        "motionprompt": dataclasses.asdict(motion_of(setup)), "overrides": overrides,
        "prompts": prompts, "seeds": seed_list, "videos": len(per_video),
        "decodes": sum(v["decodes"] for v in per_video),
        "measures": {name: mean_ci([v[name] for v in per_video]) for name in names},
        "by_step": {str(step): {name: statistics.fmean(r[name] for r in rows) for name in names}
                    for step, rows in sorted(by_step.items())},
        "timing": timing,
        "per_video": per_video,
        "device": str(setup.device), "threads": torch.get_num_threads(), "platform": platform.platform(),
        "versions": package_versions(), "git": git,
    }
    if arch_timing:
        summary["arch_timing"] = time_architectures(arch_timing, motion_of(setup).decoded_frames, max(3, repeats // 4), setup.device)
    name = "bench_tiny_decoder" + (f"_{tag}" if tag else "")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(summary, indent=2, default=str) + "\n", out / f"{name}.json")
    write_text_atomic(markdown(summary) + "\n", out / f"{name}.md")
    print(markdown(summary))
    print(f"wrote {out / name}.json and .md")


if __name__ == "__main__":
    main()
