"""Distill a tiny guidance decoder (diffusers ``AutoencoderTiny``, decoder only) from the toy model's VAE.

``-o guidance_decoder=tiny`` decodes MotionPrompt's guided frames with a cheap decoder of the model's
latent space instead of its full VAE. For SD-family models that is TAESD; the toy model (``--model
toy``: a 4x VAE at 32x32, its own latent space) needs its own, which this script makes on a CPU in
a few minutes:

    python scripts/distill_tiny_decoder.py --out /tmp/toy_tiny_decoder    # 2-6 min on 2 shared CPU cores
    python scripts/distill_tiny_decoder.py --install                              # into the toy's package data

The student is diffusers' ``AutoencoderTiny`` decoder (TAESD's architecture: clamp, conv, blocks of three
3x3 convs with a skip, nearest up-sampling) with 3 stages, i.e. 2 up-samplings = the toy VAE's 4x, and
``scaling_factor`` 1 as TAESD's: it decodes the diffusion model's (scaled) latents, which
:class:`mpcore.vae.TinyDecoder` gives it as the VAE's raw latents x the VAE's scaling factor. Its
encoder is a minimal, UNTRAINED placeholder (the class has one; guidance never encodes).

Data, from toy-world clips (:mod:`mpcore.toy.world`, seeds disjoint from the other scripts'): the
VAE's latents of the clips' frames (posterior mean), and what guidance actually decodes: the one-step
Tweedie estimates of every frame at every DDIM step of the toy model's own trajectories (their
captions, CFG 7.5, 25 steps; a rollout estimate ends in such an estimate at a later step). Target: the
full VAE's decode of the same latents. Loss: L1 + MSE on the images and L1 on their spatial differences (edges carry
the flow). Held-out clips give the PSNR (tiny vs full decode) written to ``training.json`` beside the
weights, which are saved in float16 (``save_pretrained``: config.json + safetensors).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mpcore.toy import world as toyworld  # noqa: E402

SEEDS = {"train": 4_000_000, "eval": 4_500_000}  # disjoint from train_toy.py (1_000_000+) and the disc's (3_000_000+)
TOY = dict(size=32, frames=8, max_objects=1)
TOY_FOLDER = ROOT / "plugins" / "mp-plugin-animatediff" / "mp_plugin_animatediff" / "toy"


def load_toy():
    from mpcore import plugins

    spec = plugins.get("backbone", "animatediff").spec
    return spec.load(model="toy", device=torch.device("cpu"), dtype=torch.float32, seed=0, offload=False,
                     attention="auto")


def build_student(channels: int, blocks: tuple[int, ...], vae_scale_factor: int, latent_channels: int, seed: int):
    """AutoencoderTiny whose decoder up-samples ``vae_scale_factor`` x (one 2x per stage boundary)."""
    from diffusers import AutoencoderTiny

    stages = int(round(math.log2(vae_scale_factor))) + 1
    if 2 ** (stages - 1) != vae_scale_factor or len(blocks) != stages:
        raise SystemExit(f"--blocks needs {stages} stages for a {vae_scale_factor}x VAE, got {blocks}")
    torch.manual_seed(seed)
    return AutoencoderTiny(
        latent_channels=latent_channels,
        decoder_block_out_channels=(channels,) * stages, num_decoder_blocks=tuple(blocks),
        encoder_block_out_channels=(8,) * stages, num_encoder_blocks=(1,) * stages,  # unused placeholder
        upsampling_scaling_factor=2, scaling_factor=1.0,
    )


@torch.no_grad()
def clip_latents(backbone, first_seed: int, clips: int, batch: int = 40) -> torch.Tensor:
    """Raw VAE latents (N, C, h, w) of the frames of toy-world clips (the VAE's posterior mean)."""
    out = []
    for first in range(0, clips, batch):
        images = torch.cat([toyworld.make_clip(first_seed + k, split="train", **TOY).frames
                            for k in range(first, min(first + batch, clips))]) * 2 - 1
        out.append(backbone.vae.encode(images).latent_dist.mean)  # the toy VAE, batched
    return torch.cat(out).float()


@torch.no_grad()
def trajectory_latents(backbone, first_seed: int, videos: int, seed: int, steps: int = 25, cfg: float = 7.5,
                       batch: int = 24) -> torch.Tensor:
    """Raw latents (N, C, h, w) of what guidance decodes: the one-step Tweedie estimate of every frame at
    every DDIM step of the toy model's own trajectories (captions of toy-world clips, CFG, as sampled)."""
    from mpcore_kernels import subset_tweedie

    from mpcore.sampling import cfg_output

    generator = torch.Generator().manual_seed(seed)
    uncond = backbone.encode_negative_prompt([""])
    frames, side = TOY["frames"], TOY["size"] // backbone.vae_scale_factor
    out = []
    for first in range(0, videos, batch):
        count = min(batch, videos - first)
        captions = [toyworld.sample_scene(first_seed + k, split="train", **TOY).caption for k in range(first, first + count)]
        cond = torch.cat([backbone.encode_prompt([caption]) for caption in captions])
        scheduler = backbone.make_scheduler()
        scheduler.set_timesteps(steps)
        latents = torch.randn(count, backbone.latent_channels, frames, side, side, generator=generator)
        latents = latents * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            output = cfg_output(backbone, latents, t, cond, uncond.expand_as(cond), cfg)
            out.append(subset_tweedie(latents, output, list(range(frames)), scheduler.alphas_cumprod[int(t)],
                                      prediction_type=backbone.prediction_type, latent_scale=backbone.latent_scale(t)))
            latents = scheduler.step(output, t, latents).prev_sample
        print(f"  trajectories of {first + count}/{videos} videos", flush=True)
    return torch.cat(out).float()


@torch.no_grad()
def full_decode(backbone, latents: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The toy VAE's decode of raw latents, batched (the backbone decodes frame by frame)."""
    return torch.cat([backbone.vae.decode(latents[i:i + chunk]).sample for i in range(0, len(latents), chunk)]).float()


def image_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    def grads(x):
        return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]

    loss = F.l1_loss(pred, target) + F.mse_loss(pred, target)
    for gp, gt in zip(grads(pred), grads(target)):
        loss = loss + 0.5 * F.l1_loss(gp, gt)
    return loss


@torch.no_grad()
def psnr(decoder, latents: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of the tiny decode against the full decode, images mapped to [0, 1]."""
    pred = torch.cat([decoder(latents[i:i + 256]) for i in range(0, len(latents), 256)]).float()
    mse = F.mse_loss((pred.clamp(-1, 1) + 1) / 2, (target.clamp(-1, 1) + 1) / 2)
    return float(10 * torch.log10(1 / mse))


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (diffusers AutoencoderTiny)")
    parser.add_argument("--install", action="store_true", help=f"write into {TOY_FOLDER / 'tiny_decoder'}")
    parser.add_argument("--clips", type=int, default=200, help="training clips (8 frames each) for VAE latents")
    parser.add_argument("--videos", type=int, default=16, help="toy-model trajectories (25 steps x 8 frames each)")
    parser.add_argument("--eval-clips", type=int, default=20)
    parser.add_argument("--eval-videos", type=int, default=4)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--blocks", default="1,1,1", help="AutoencoderTiny blocks per decoder stage")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--minutes", type=float, default=6.0, help="stop training after this long (safety cap)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (args.out is None) == (not args.install):
        parser.error("give exactly one of --out DIR and --install")
    return args


def distill(decoder, latents: torch.Tensor, targets: torch.Tensor, args) -> tuple[int, list[dict], float]:
    """Train the decoder's weights on (latent, full decode) pairs: Adam, cosine lr to 5%, a time cap.
    Returns (steps done, the loss log, seconds)."""
    optimizer = torch.optim.Adam(list(decoder.model.decoder.parameters()), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    train_start, step, log = time.perf_counter(), 0, []
    for step in range(1, args.steps + 1):
        lr = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = torch.randint(0, len(latents), (args.batch,), generator=generator)
        loss = image_loss(decoder(latents[index]), targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 250 == 0 or step == 1:
            elapsed = time.perf_counter() - train_start
            log.append({"step": step, "loss": float(loss.detach()), "seconds": round(elapsed, 1)})
            print(f"step {step}: loss {float(loss.detach()):.4f} ({elapsed:.0f} s)", flush=True)
        if time.perf_counter() - train_start > 60 * args.minutes:
            print(f"time cap reached at step {step}", flush=True)
            break
    return step, log, time.perf_counter() - train_start


def save(student, out: Path, record: dict) -> None:
    """The decoder (fp16) and its training record into ``out``, written to a temporary sibling folder
    and renamed, so ``out`` is never left half-written."""
    partial = out.with_name(f".{out.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    student.half().save_pretrained(partial)
    (partial / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    for path in partial.iterdir():
        path.chmod(0o644)  # package data: readable by all (save_pretrained writes the weights 0600)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = TOY_FOLDER / "tiny_decoder" if args.install else args.out
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    from mpcore.vae import TinyDecoder

    backbone = load_toy()
    print("latents: VAE encodes of clips, estimates along the model's own trajectories ...", flush=True)
    train = {"clean": clip_latents(backbone, SEEDS["train"], args.clips),
             "estimate": trajectory_latents(backbone, SEEDS["train"], args.videos, args.seed)}
    held = {"clean": clip_latents(backbone, SEEDS["eval"], args.eval_clips),
            "estimate": trajectory_latents(backbone, SEEDS["eval"], args.eval_videos, args.seed + 1)}
    latents = torch.cat([train["clean"], train["estimate"]])
    targets = full_decode(backbone, latents)
    held_targets = {name: full_decode(backbone, value) for name, value in held.items()}
    data_s = time.perf_counter() - start
    print(f"{len(latents)} training frames ({data_s:.0f} s)", flush=True)

    blocks = tuple(int(b) for b in args.blocks.split(","))
    student = build_student(args.channels, blocks, backbone.vae_scale_factor, backbone.latent_channels, args.seed)
    student.encoder.requires_grad_(False)
    decoder = TinyDecoder(student, backbone.vae_scaling_factor(), source=str(out))
    step, log, train_s = distill(decoder, latents, targets, args)

    student.eval()
    scores = {f"psnr_db_{name}": psnr(decoder, held[name], held_targets[name]) for name in held}
    print("held-out PSNR vs the full VAE decode: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    save(student, out, {
        "what": "tiny guidance decoder of the toy model's VAE latent space (diffusers AutoencoderTiny); "
                "decoder distilled from the toy VAE's decoder, encoder untrained (unused)",
        "script": "scripts/distill_tiny_decoder.py",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "steps_done": step,
        "training_frames": len(latents),
        "decoder_parameters": sum(p.numel() for p in student.decoder.parameters()),
        "vae_decoder_parameters": sum(p.numel() for p in backbone.vae.decoder.parameters()),
        "held_out": {"clips": args.eval_clips, **{k: round(v, 2) for k, v in scores.items()}},
        "seconds": {"data": round(data_s, 1), "train": round(train_s, 1)},
        "log": log,
    })
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size / 1024:.0f} KiB)")

if __name__ == "__main__":
    main()
