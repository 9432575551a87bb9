"""``mpcore run``: one video (MotionPrompt or the plain baseline), its manifest and plots (the job:
:mod:`mpcore.jobs.run`)."""

from __future__ import annotations

import re

import click

from mpcore.cli.common import as_click_error, run_options, with_backbone_options
from mpcore.config import FREE_INIT_METHODS, SCHEDULERS, FreeInitConfig
from mpcore.interfaces import DEFAULT_BACKBONE, DEFAULT_MODEL, TINY_MODEL
from mpcore.io.console import echo
from mpcore.jobs import run as runner
from mpcore.jobs.options import DTYPES
from mpcore.jobs import setup as run_setup
from mpcore.jobs.write import check_output

FREE_INIT = FreeInitConfig()  # the defaults the --free-init* options show (FreeInitConfig fills what is not given)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48] or "video"


def build_run_command(options: dict[str, tuple[click.Option, list[str]]]) -> click.Command:
    """``mpcore run`` with the installed backbones' options (:func:`mpcore.cli.common.backbone_options`)."""
    return with_backbone_options(click.Command("run", callback=_run, help=_run.__doc__, params=run_params()), options)


def run_params() -> list[click.Parameter]:
    """``mpcore run``'s own options (``generate`` and ``diagnose steps`` take most of them too)."""
    O = click.Option
    return [
        O(["--backbone"], default=None,
          help=f"Backbone plugin name (see `mpcore plugins`). Default: {DEFAULT_BACKBONE}; with no --model either, its "
               f"bundled '{DEFAULT_MODEL}' model."),
        O(["--model"], default=None,
          help=f"Model weights: hub id, folder or file; '{DEFAULT_MODEL}' = the bundled toy model, '{TINY_MODEL}' = tiny "
               "random model (both offline)."),
        O(["--prompt", "-p"], required=True, help="Text prompt."),
        O(["--negative-prompt"], default=None, help="Negative prompt for classifier-free guidance."),
        O(["--frames"], type=int, default=None, help="Number of frames."),
        O(["--height"], type=int, default=None, help="Frame height in pixels."),
        O(["--width"], type=int, default=None, help="Frame width in pixels."),
        O(["--steps"], type=int, default=None, help="DDIM steps (paper: 50)."),
        O(["--cfg"], type=float, default=None, help="Classifier-free guidance scale."),
        O(["--seed"], type=int, default=None, help="Seed of the initial noise (and of the frame-pair choice)."),
        O(["--eta"], type=float, default=None, help="DDIM eta (0 = deterministic)."),
        O(["--scheduler"], type=click.Choice(SCHEDULERS), default=None,
          help="Update rule with the backbone's own betas (SD-family backbones): ddim, or ancestral ddpm (LaVie's "
               "own script's). Default: the backbone's own scheduler."),
        O(["--free-init"], type=int, default=None,
          help="FreeInit (Wu et al. 2023) sampling passes: N > 1 re-initializes the noise's low frequencies from "
               f"the previous result N - 1 times (N times the sampling cost). Default: {FREE_INIT.iterations} (off)."),
        O(["--free-init-method"], type=click.Choice(FREE_INIT_METHODS), default=None,
          help=f"FreeInit's low-pass filter. Default: {FREE_INIT.method}."),
        O(["--free-init-order"], type=int, default=None, help=f"Order of the butterworth filter. Default: {FREE_INIT.order}."),
        O(["--free-init-spatial-stop"], type=float, default=None,
          help=f"FreeInit's normalized spatial stop frequency D_s. Default: {FREE_INIT.spatial_stop_frequency}."),
        O(["--free-init-temporal-stop"], type=float, default=None,
          help=f"FreeInit's normalized temporal stop frequency D_t. Default: {FREE_INIT.temporal_stop_frequency}."),
        O(["--guidance"], default=None,
          help="Guidance plugin name (see `mpcore plugins`); 'none' gives the plain baseline. Its settings: "
               "-o KEY=VALUE. Default: mpcore's own, MotionPrompt."),
        O(["--flow"], default=None,
          help="Flow estimator plugin name (= -o flow_estimator=NAME). Default: the one the discriminator was "
               "trained on (its trained_on), else the backbone's (raft; tvl1 with --model tiny)."),
        O(["--flow-weights"], default=None, help="Flow estimator weights: path, plugin-specific name, or 'random'."),
        O(["--flow-option", "flow_options"], multiple=True, metavar="KEY=VALUE", help="Flow estimator option (repeatable)."),
        O(["--discriminator"], default=None, help="Discriminator .safetensors (config JSON beside it), or 'random'."),
        O(["--discriminator-type"], default=None, help="Discriminator plugin (default: 'type' in its config JSON, else vit)."),
        O(["-o", "--set", "overrides"], multiple=True, metavar="KEY=VALUE",
          help="Guidance setting, e.g. -o lr=0.001 -o opt_range=4,15 -o iterations=3 (repeatable; checked against "
               "the chosen --guidance's settings)."),
        O(["--compare"], is_flag=True, help="Also sample the baseline (same seed) and write baseline | guided side by side."),
        O(["--out"], default=None, help="Output .mp4, .gif or folder (PNG frames). Default: outputs/<prompt>_<seed>.mp4"),
        O(["--overwrite"], is_flag=True,
          help="Replace an existing output at --out (and its manifest, compare video and trace plot)."),
        O(["--fps"], type=int, default=8, show_default=True, help="Frames per second of the written video."),
        O(["--device"], default=None, help="torch device (default: cuda if available, else cpu)."),
        O(["--dtype"], type=click.Choice(DTYPES), default="auto", show_default=True,
          help="Model weight dtype (auto: on CUDA the backbone's own, float16 or bfloat16; float32 on CPU). Token, optimizer state and loss stay float32."),
        O(["--offload"], is_flag=True, help="Model CPU offload (diffusers/accelerate hooks) for small GPUs."),
        O(["--attention"], type=click.Choice(["auto", "sdpa", "xformers"]), default="auto", show_default=True,
          help="Attention implementation; xformers needs CUDA and the xformers extra."),
        O(["--progress/--no-progress"], default=True, help="Show progress bars."),
    ]


def _run(**kwargs):
    """Sample a video with MotionPrompt guidance (or the plain baseline) and write video, manifest and plots."""
    try:
        _run_checked(**kwargs)
    except runner.user_errors() as error:
        raise as_click_error(error) from None


def _run_checked(**kwargs):
    """``mpcore run`` is :func:`mpcore.jobs.run.run_one` (= :func:`mpcore.generate` + ``save``) after the checks."""
    prompt, out, overwrite = kwargs.pop("prompt"), kwargs.pop("out"), kwargs.pop("overwrite")
    setup = run_setup.prepare(run_options(kwargs))
    out = check_output(out or f"outputs/{_slug(prompt)}_{setup.sampler.seed}.mp4", overwrite)  # nothing created yet
    models = run_setup.load(setup)
    paths = runner.run_one(setup, models, prompt, setup.sampler.seed, out)
    for name, path in paths.items():
        echo(f"wrote {name}: {path}")
