"""The ``mpcore`` command line (click). ``python -m mpcore`` is the same program.

Every check that can fail cheaply (unknown plugin, invalid config, unwritable output, missing
files) runs before any model is loaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from mpcore import __version__, plugins
from mpcore.config import MotionPromptConfig, SamplerConfig, apply_overrides
from mpcore.interfaces import DEFAULT_BACKBONE, DEFAULT_MODEL, TINY_MODEL

DTYPES = ("auto", "float32", "float16", "bfloat16")
SAMPLER_FLAGS = {  # CLI flag name -> SamplerConfig field
    "frames": "frames",
    "height": "height",
    "width": "width",
    "steps": "steps",
    "cfg": "cfg_scale",
    "seed": "seed",
    "eta": "eta",
    "negative_prompt": "negative_prompt",
}


def echo(message: str) -> None:
    click.echo(message, err=True)


def _parse_scalar(raw: str) -> Any:
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def _resolve_device(device: str | None):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise click.BadParameter(str(error), param_hint="--device") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available on this machine; use --device cpu", param_hint="--device")
    return resolved


def resolve_dtype(name: str, device):
    """``--dtype`` -> torch dtype; ``auto`` is float16 on CUDA, float32 elsewhere."""
    import torch

    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48] or "video"


def resolve_configs(spec, model: str | None, sampler_flags: dict[str, Any], overrides: list[str]):
    """SamplerConfig and MotionPromptConfig: backbone defaults, then CLI flags, then ``-o`` overrides.

    The tiny random model defaults to the weight-free ``tvl1`` flow estimator, so it runs offline.
    """
    defaults, motion_defaults = spec.defaults_for(model)
    sampler = SamplerConfig(**defaults)
    sampler = apply_overrides(sampler, {SAMPLER_FLAGS[k]: str(v) for k, v in sampler_flags.items() if v is not None})
    if model == TINY_MODEL:
        motion_defaults["flow_estimator"] = "tvl1"
    motion = MotionPromptConfig(**motion_defaults)
    motion = apply_overrides(motion, overrides)
    return sampler, motion


def build_cli() -> click.Group:
    """The command group, with the installed backbones' extra options and plugin commands added."""

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="mpcore")
    def cli():
        """MotionPrompt: natural motion for video diffusion models, at sampling time."""

    @cli.command("plugins")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    def plugins_command(as_json: bool):
        """List installed backbones, flow estimators, discriminators and metrics, and where each comes from."""
        state = plugins.load_plugins()
        rows = []
        for kind in plugins.KINDS:
            for name, item in sorted(plugins.registry(kind, state).items()):
                rows.append(
                    {
                        "name": name,
                        "kind": kind,
                        "version": item.version,
                        "distribution": item.distribution,
                        "plugin": item.plugin,
                        "description": getattr(item.spec, "description", ""),
                    }
                )
        failed = [{"plugin": name, "error": error} for name, error in sorted(state.failed.items())]
        if as_json:
            click.echo(json.dumps({"plugins": rows, "failed": failed, "warnings": state.warnings}, indent=2))
            return
        header = ("NAME", "KIND", "VERSION", "DISTRIBUTION")
        table = [header] + [(r["name"], r["kind"], r["version"] or "-", r["distribution"] or "(in-process)") for r in rows]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
        for row in table:
            click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
        for item in failed:
            click.echo(f"FAILED {item['plugin']}: {item['error']}")

    state = plugins.load_plugins()
    backbones = plugins.registry("backbone", state)
    backbone_options: dict[str, tuple[click.Option, list[str]]] = {}
    for name, item in backbones.items():
        for option in item.spec.options:
            if option.name in backbone_options:
                backbone_options[option.name][1].append(name)
            else:
                backbone_options[option.name] = (option, [name])

    from mpcore import generate  # imported here: generate imports helpers from this module

    for name, callback, params in [("run", _run, _run_params()), ("generate", generate.command, generate.params())]:
        command = click.Command(name, callback=callback, help=callback.__doc__,
                                params=params + [option for option, _ in backbone_options.values()])
        command.backbone_options = {k: owners for k, (_, owners) in backbone_options.items()}  # type: ignore[attr-defined]
        cli.add_command(command)
    from mpcore import diagnose_cli  # imported here: it imports helpers from this module

    diagnose_cli.register(cli, backbone_options)
    # imported here: these modules import helpers from this one
    from mpcore.disc_cli import disc
    from mpcore.drift_cli import drift
    from mpcore.eval_cli import eval_command
    from mpcore.flows_cli import flows
    from mpcore.report import report
    from mpcore.weights_cli import weights

    for group_or_command in (flows, disc, eval_command, drift, report, weights):
        cli.add_command(group_or_command)
    plugins.register_commands(state, cli)  # a plugin whose hook raises is dropped and listed as failed
    for warning in state.warnings:
        echo(f"warning: {warning}")
    return cli


def _run_params() -> list[click.Parameter]:
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
        O(["--guidance"], type=click.Choice(["motionprompt", "none"]), default="motionprompt", show_default=True,
          help="'none' gives the plain baseline."),
        O(["--flow"], default=None,
          help="Flow estimator plugin name (= -o flow_estimator=NAME; default raft, tvl1 with --model tiny/toy)."),
        O(["--flow-weights"], default=None, help="Flow estimator weights: path, plugin-specific name, or 'random'."),
        O(["--flow-option", "flow_options"], multiple=True, metavar="KEY=VALUE", help="Flow estimator option (repeatable)."),
        O(["--discriminator"], default=None, help="Discriminator .safetensors (config JSON beside it), or 'random'."),
        O(["--discriminator-type"], default=None, help="Discriminator plugin (default: 'type' in its config JSON, else vit)."),
        O(["-o", "--set", "overrides"], multiple=True, metavar="KEY=VALUE",
          help="MotionPrompt setting, e.g. -o lr=0.001 -o opt_range=4,15 -o iterations=3 (repeatable)."),
        O(["--compare"], is_flag=True, help="Also sample the baseline (same seed) and write baseline | MotionPrompt side by side."),
        O(["--out"], default=None, help="Output .mp4, .gif or folder (PNG frames). Default: outputs/<prompt>_<seed>.mp4"),
        O(["--overwrite"], is_flag=True,
          help="Replace an existing output at --out (and its manifest, compare video and trace plot)."),
        O(["--fps"], type=int, default=8, show_default=True, help="Frames per second of the written video."),
        O(["--device"], default=None, help="torch device (default: cuda if available, else cpu)."),
        O(["--dtype"], type=click.Choice(DTYPES), default="auto", show_default=True,
          help="Model weight dtype (auto: float16 on CUDA, float32 on CPU). Token, optimizer state and loss stay float32."),
        O(["--offload"], is_flag=True, help="Model CPU offload (diffusers/accelerate hooks) for small GPUs."),
        O(["--attention"], type=click.Choice(["auto", "sdpa", "xformers"]), default="auto", show_default=True,
          help="Attention implementation; xformers needs CUDA and the xformers extra."),
        O(["--progress/--no-progress"], default=True, help="Show progress bars."),
    ]


def _run(**kwargs):
    """Sample a video with MotionPrompt guidance (or the plain baseline) and write video, manifest and plots."""
    from mpcore import runner

    try:
        _run_checked(**kwargs)
    except runner.user_errors() as error:
        raise click.ClickException(str(error)) from None


def _run_checked(**kwargs):
    from mpcore import runner, video

    prompt, out, overwrite = kwargs.pop("prompt"), kwargs.pop("out"), kwargs.pop("overwrite")
    setup = runner.prepare(kwargs, click.get_current_context().command.backbone_options)  # type: ignore[attr-defined]
    # create=False: nothing is created under --out before the model has loaded
    out = video.check_output_writable(Path(out or f"outputs/{_slug(prompt)}_{setup.sampler.seed}.mp4"), create=False)
    existing = [p for p in setup.output_paths(out, every=True).values() if p is not None and p.exists()]
    if existing and not overwrite:
        raise click.UsageError(f"{existing[0]} already exists (an earlier run's output): pass --overwrite to replace "
                               "it and its companions, or choose another --out")
    models = runner.load(setup)
    paths = runner.generate_one(setup, models, prompt, setup.sampler.seed, out)
    for name, path in paths.items():
        echo(f"wrote {name}: {path}")


def main() -> None:
    build_cli()(prog_name="mpcore")


if __name__ == "__main__":
    main()
