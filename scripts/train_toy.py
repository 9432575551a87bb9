"""Train the bundled toy world's models on a CPU: VAE, then the AnimateDiff-architecture video model.

Stages (each resumable, each writing curves and sample grids into ``--work``):

    python scripts/train_toy.py data   --work toy_run            # render the procedural training clips
    python scripts/train_toy.py vae    --work toy_run            # small AutoencoderKL on their frames
    python scripts/train_toy.py video  --work toy_run            # text-to-video UNet + motion modules on VAE latents
    python scripts/train_toy.py export --work toy_run --out DIR  # diffusers folders (fp16) for package data

The discriminator is trained afterwards with mpcore's own pipeline (``mpcore generate``,
``mpcore flows extract``, ``mpcore disc train``): see ``scripts/train_toy_disc.sh``.

Why this shape (measured on 2 CPU cores): pixel-space video diffusion at 32x32x8 is too slow to
learn in hours, so the video model works in the latent space of a 4x down-sampling VAE (8x8
latents), with per-frame 2D convolutions, attention over text only at the lowest resolution, and
AnimateDiff motion modules (temporal attention) at every level: the same contracts the real
AnimateDiff has (text cross-attention, separate temporal layers, VAE decode).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from mpcore.toy import world as toyworld  # noqa: E402

TOY = dict(size=32, frames=8, max_objects=1)
TEXT_WIDTH = 64


# ----------------------------------------------------------------------------- models


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=16, sample_size=TOY["size"],
    )


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    from mpcore.clip_vocab import VOCAB_SIZE

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, bos_token_id=VOCAB_SIZE - 2, eos_token_id=VOCAB_SIZE - 1,
        pad_token_id=VOCAB_SIZE - 1, hidden_act="quick_gelu", projection_dim=TEXT_WIDTH,
    ))


def build_unet_and_adapter():
    from diffusers import MotionAdapter, UNet2DConditionModel

    channels = (32, 64)
    unet = UNet2DConditionModel(
        sample_size=TOY["size"] // 4, in_channels=4, out_channels=4, block_out_channels=channels, layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=8, norm_num_groups=8,
    )
    adapter = MotionAdapter(
        block_out_channels=channels, motion_layers_per_block=1, motion_num_attention_heads=8, motion_norm_num_groups=8,
        motion_max_seq_length=32, use_motion_mid_block=False,
    )
    return unet, adapter


def build_tokenizer(folder: Path):
    from mpcore.clip_vocab import build_clip_tokenizer

    return build_clip_tokenizer(folder)


# ----------------------------------------------------------------------------- helpers


def log_line(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def plot_curve(log: Path, out: Path, key: str = "loss", title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log)
    if not records:
        return
    steps = np.array([r["step"] for r in records])
    values = np.array([r[key] for r in records])
    window = max(1, len(values) // 50)
    smooth = np.convolve(values, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, values, alpha=0.3, label=key)
    ax.plot(steps[window - 1:], smooth, label=f"{key} (mean of {window})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def save_grid(videos: torch.Tensor, path: Path, scale: int = 3) -> None:
    """videos (N, F, 3, H, W) in [0, 1] -> one PNG, a row per video."""
    import imageio.v3 as iio

    rows = [torch.cat(list(v), dim=2) for v in videos.clamp(0, 1)]  # (3, H, F*W)
    grid = (torch.cat(rows, dim=1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    iio.imwrite(path, grid.repeat(scale, 0).repeat(scale, 1))


def load_data(work: Path):
    data = np.load(work / "clips.npz")
    captions = json.loads((work / "captions.json").read_text())
    return torch.from_numpy(data["frames"]), captions


def lr_at(step: int, total: int, peak: float, warmup: int = 200, floor: float = 0.1) -> float:
    """Linear warm-up then cosine decay to ``floor * peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@click.group()
def cli():
    """Train the toy world's VAE and video model."""


# ----------------------------------------------------------------------------- data


@cli.command()
@click.option("--work", type=click.Path(path_type=Path), required=True)
@click.option("--clips", default=20000, show_default=True)
@click.option("--first-seed", default=1_000_000, show_default=True, help="Training seeds; held-out evaluation uses others.")
def data(work: Path, clips: int, first_seed: int):
    """Render the training clips (split "train") into WORK/clips.npz + captions.json."""
    from tqdm import tqdm

    work.mkdir(parents=True, exist_ok=True)
    frames = np.empty((clips, TOY["frames"], TOY["size"], TOY["size"], 3), dtype=np.uint8)
    captions = []
    for i in tqdm(range(clips), desc="render", mininterval=10):
        clip = toyworld.make_clip(first_seed + i, split="train", **TOY)
        frames[i] = clip.uint8()
        captions.append(clip.caption)
    np.savez(work / "clips.npz", frames=frames)
    (work / "captions.json").write_text(json.dumps(captions))
    save_grid(torch.from_numpy(frames[:8]).permute(0, 1, 4, 2, 3).float() / 255, work / "data_grid.png")
    click.echo(f"{clips} clips -> {work / 'clips.npz'}")


# ----------------------------------------------------------------------------- VAE


@cli.command()
@click.option("--work", type=click.Path(path_type=Path), required=True)
@click.option("--steps", default=2500, show_default=True)
@click.option("--batch", default=64, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--kl", default=1e-6, show_default=True, help="KL weight (SD's autoencoder uses 1e-6).")
@click.option("--seed", default=0, show_default=True)
def vae(work: Path, steps: int, batch: int, lr: float, kl: float, seed: int):
    """Train the AutoencoderKL on single frames: L1 + MSE reconstruction + a small KL term."""
    torch.manual_seed(seed)
    frames, _ = load_data(work)
    images = frames.flatten(0, 1)  # (N*F, H, W, 3) uint8
    model = build_vae()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    folder, log = work / "vae", work / "vae_log.jsonl"
    start_step = 0
    if (folder / "state.pt").exists():
        state = torch.load(folder / "state.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["step"]
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed + start_step)
    fixed = images[torch.arange(0, len(images), len(images) // 8)[:8]].permute(0, 3, 1, 2).float() / 127.5 - 1
    began = time.perf_counter()
    for step in range(start_step, steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        index = torch.randint(len(images), (batch,), generator=generator)
        x = images[index].permute(0, 3, 1, 2).float() / 127.5 - 1
        posterior = model.encode(x).latent_dist
        recon = model.decode(posterior.sample(generator)).sample
        rec = (recon - x).abs().mean() + F.mse_loss(recon, x)
        kl_term = posterior.kl().mean() / x[0].numel()
        loss = rec + kl * kl_term * x[0].numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            log_line(log, {"step": step, "loss": float(rec), "kl": float(kl_term), "s": time.perf_counter() - began})
        if (step + 1) % 250 == 0 or step + 1 == steps:
            with torch.no_grad():
                out = model.decode(model.encode(fixed).latent_dist.mode()).sample
            pair = torch.stack([fixed, out], dim=1)  # (8, 2, 3, H, W): original | reconstruction
            save_grid((pair + 1) / 2, work / "vae_recon.png", scale=4)
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1}, folder / "state.pt")
            plot_curve(log, work / "vae_loss.png", title="toy VAE reconstruction (L1 + MSE)")
            click.echo(f"vae step {step + 1}/{steps} rec {float(rec):.4f} ({time.perf_counter() - began:.0f} s)")
    # scaling factor: 1 / std of the latents, as Stable Diffusion's VAE defines it
    with torch.no_grad():
        sample = images[torch.randperm(len(images), generator=generator)[:2048]].permute(0, 3, 1, 2).float() / 127.5 - 1
        latents = torch.cat([model.encode(chunk).latent_dist.mode() for chunk in sample.split(256)])
    model.register_to_config(scaling_factor=float(1.0 / latents.std()))
    model.save_pretrained(folder)
    click.echo(f"VAE saved to {folder} (scaling_factor {model.config.scaling_factor:.4f})")


# ----------------------------------------------------------------------------- video model

SAMPLE_CAPTIONS = [  # fixed captions for the sample grids: 4 of the training templates, 2 held-out
    "a red circle moving right over a striped background",
    "a blue square moving up over a plain background",
    "a yellow triangle sliding left on a checkered background",
    "a green diamond over a gradient background, the camera panning right",
    "a purple square spinning in place on a striped background",
    "an orange circle moving down over a checkered background",
    "plain background, a green triangle drifting down",
    "striped background, a blue circle drifting left",
]


def scheduler_config(ddim: bool = True) -> dict:
    """AnimateDiff's noise schedule (linear betas 0.00085..0.012 over 1000 steps); DDIM adds its
    sampling-only settings."""
    from mp_plugin_animatediff.loading import ANIMATEDIFF_SCHEDULER

    config = dict(num_train_timesteps=1000, **ANIMATEDIFF_SCHEDULER)
    if not ddim:
        config = {k: v for k, v in config.items() if k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample")}
    return config


def encode_latents(vae, frames: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """(N, F, H, W, 3) uint8 -> (N, 4, F, h, w) float16 latents (posterior mean x scaling factor)."""
    from tqdm import tqdm

    n, f = frames.shape[:2]
    flat = frames.flatten(0, 1)
    out = []
    with torch.no_grad():
        for start in tqdm(range(0, len(flat), chunk), desc="encode", mininterval=10):
            x = flat[start:start + chunk].permute(0, 3, 1, 2).float() / 127.5 - 1
            out.append((vae.encode(x).latent_dist.mode() * vae.config.scaling_factor).half())
    latents = torch.cat(out)
    return latents.view(n, f, *latents.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def sample_videos(unet, text_encoder, tokenizer, vae, captions: list[str], seed: int, steps: int = 25,
                  cfg: float = 7.5) -> torch.Tensor:
    """DDIM samples (N, F, 3, H, W) in [0, 1] for the grids (the same update mpcore's sampler makes)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(**scheduler_config())
    scheduler.set_timesteps(steps)
    cond = text_encoder(tokenize(tokenizer, captions))[0]
    uncond = text_encoder(tokenize(tokenizer, [""] * len(captions)))[0]
    frames, side = TOY["frames"], TOY["size"] // 4
    latents = torch.randn(len(captions), 4, frames, side, side, generator=torch.Generator().manual_seed(seed))
    for t in scheduler.timesteps:
        both = torch.cat([uncond, cond]).repeat_interleave(frames, dim=0)
        eps_uncond, eps_cond = unet(torch.cat([latents, latents]), t, encoder_hidden_states=both).sample.chunk(2)
        latents = scheduler.step(eps_uncond + cfg * (eps_cond - eps_uncond), t, latents).prev_sample
    flat = latents.permute(0, 2, 1, 3, 4).flatten(0, 1) / vae.config.scaling_factor
    images = vae.decode(flat).sample
    return ((images + 1) / 2).view(len(captions), frames, *images.shape[1:])


@cli.command()
@click.option("--work", type=click.Path(path_type=Path), required=True)
@click.option("--steps", default=5000, show_default=True)
@click.option("--batch", default=32, show_default=True)
@click.option("--lr", default=5e-4, show_default=True)
@click.option("--uncond-prob", default=0.1, show_default=True, help="Caption dropout, for classifier-free guidance.")
@click.option("--snr-gamma", default=5.0, show_default=True, help="Min-SNR-gamma loss weighting (Hang et al. 2023).")
@click.option("--ema", default=0.999, show_default=True)
@click.option("--every", default=250, show_default=True, help="Checkpoint and sample grid every N steps.")
@click.option("--seed", default=0, show_default=True)
def video(work: Path, steps: int, batch: int, lr: float, uncond_prob: float, snr_gamma: float, ema: float,
          every: int, seed: int):
    """Train UNet + motion modules + text encoder on VAE latents (epsilon prediction, DDPM noise)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNetMotionModel
    from diffusers.training_utils import EMAModel, compute_snr

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(work / "vae").eval().requires_grad_(False)
    latents_path = work / "latents.pt"
    if not latents_path.exists():
        frames, _ = load_data(work)
        torch.save(encode_latents(vae, frames), latents_path)
    latents = torch.load(latents_path)  # (N, 4, F, h, w) float16
    captions = json.loads((work / "captions.json").read_text())
    tokenizer = build_tokenizer(work / "tokenizer")
    ids = tokenize(tokenizer, captions)
    empty_ids = tokenize(tokenizer, [""])[0]

    unet2d, adapter = build_unet_and_adapter()
    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    text_encoder = build_text_encoder()
    modules = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
    optimizer = torch.optim.AdamW(modules.parameters(), lr=lr, weight_decay=1e-2)
    ema_model = EMAModel(modules.parameters(), decay=ema)
    noise_scheduler = DDPMScheduler(**scheduler_config(ddim=False))
    folder, log = work / "video", work / "video_log.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    start_step = 0
    if (folder / "state.pt").exists():
        state = torch.load(folder / "state.pt", weights_only=False)
        modules.load_state_dict(state["modules"])
        optimizer.load_state_dict(state["optimizer"])
        ema_model.load_state_dict(state["ema"])
        start_step = state["step"]
        torch.set_rng_state(state["rng"])
        click.echo(f"resumed at step {start_step}")
    began = time.perf_counter()
    for step in range(start_step, steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        index = torch.randint(len(latents), (batch,))
        x0 = latents[index].float()
        tokens = ids[index].clone()
        tokens[torch.rand(batch) < uncond_prob] = empty_ids  # caption dropout
        noise = torch.randn_like(x0)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,))
        # forward process: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps  (DDPM, Ho et al. 2020 eq. 4)
        noisy = noise_scheduler.add_noise(x0, noise, t)
        cond = text_encoder(tokens)[0].repeat_interleave(TOY["frames"], dim=0)
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3, 4))
        # min-SNR-gamma weights for epsilon prediction: min(SNR, gamma) / SNR
        snr = compute_snr(noise_scheduler, t)
        weights = torch.clamp(snr, max=snr_gamma) / snr
        loss = (per_sample * weights).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        optimizer.step()
        ema_model.step(modules.parameters())
        if step % 10 == 0:
            log_line(log, {"step": step, "loss": float(per_sample.mean().detach()), "weighted": float(loss.detach()),
                           "lr": optimizer.param_groups[0]["lr"], "s": time.perf_counter() - began})
        if (step + 1) % every == 0 or step + 1 == steps:
            torch.save({"modules": modules.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema_model.state_dict(),
                        "step": step + 1, "rng": torch.get_rng_state()}, folder / "state.tmp")
            (folder / "state.tmp").replace(folder / "state.pt")
            plot_curve(log, work / "video_loss.png", title="toy video model: noise-prediction MSE")
            # sample grid with the EMA weights
            ema_modules = build_ema_copy(modules, ema_model)
            videos = sample_videos(ema_modules["unet"].eval(), ema_modules["text_encoder"].eval(), tokenizer, vae,
                                   SAMPLE_CAPTIONS, seed=0)
            save_grid(videos, work / f"video_samples_{step + 1:05d}.png")
            click.echo(f"video step {step + 1}/{steps} loss {float(loss):.4f} ({time.perf_counter() - began:.0f} s)")


@cli.command()
@click.option("--work", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="e.g. plugins/mp-plugin-animatediff/mp_plugin_animatediff/toy")
def export(work: Path, out: Path):
    """Write the EMA weights as users' AnimateDiff files look: an SD-1.5-layout diffusers folder
    (OUT/base) and a MotionAdapter folder (OUT/motion_adapter), weights stored in float16."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNetMotionModel
    from diffusers.training_utils import EMAModel

    state = torch.load(work / "video" / "state.pt", weights_only=False)
    unet2d, adapter = build_unet_and_adapter()
    modules = torch.nn.ModuleDict({"unet": UNetMotionModel.from_unet2d(unet2d, adapter), "text_encoder": build_text_encoder()})
    modules.load_state_dict(state["modules"])
    ema_model = EMAModel(modules.parameters())
    ema_model.load_state_dict(state["ema"])
    ema_model.copy_to(modules.parameters())
    # split the motion UNet back into the SD UNet and the motion adapter (same key names)
    motion_state = modules["unet"].state_dict()
    unet2d.load_state_dict({k: v for k, v in motion_state.items() if "motion_modules" not in k}, strict=True)
    adapter_keys = set(adapter.state_dict())
    adapter.load_state_dict({k: v for k, v in motion_state.items() if k in adapter_keys}, strict=True)
    vae = AutoencoderKL.from_pretrained(work / "vae")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=modules["text_encoder"], tokenizer=build_tokenizer(work / "tokenizer"), unet=unet2d,
        scheduler=DDIMScheduler(**scheduler_config()), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(torch.float16)
    pipe.save_pretrained(out / "base")
    adapter.to(torch.float16).save_pretrained(out / "motion_adapter")
    (out / "training.json").write_text(json.dumps({
        "video_steps": state["step"], "toy_world": TOY, "text_width": TEXT_WIDTH,
        "vae_scaling_factor": vae.config.scaling_factor,
    }, indent=2))
    click.echo(f"exported step {state['step']} to {out}")


def build_ema_copy(modules, ema_model):
    import copy

    clone = copy.deepcopy(modules)
    ema_model.copy_to(clone.parameters())
    return clone


if __name__ == "__main__":
    cli()
