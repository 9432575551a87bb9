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

# Nothing here imports torch at module level (nor mpcore.config / mpcore.interfaces, which do): `mpcore --help`
# and `--version` stay fast.

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
    from mpcore.config import MotionPromptConfig, SamplerConfig, apply_overrides
    from mpcore.interfaces import TINY_MODEL

    defaults, motion_defaults = spec.defaults_for(model)
    sampler = SamplerConfig(**defaults)
    sampler = apply_overrides(sampler, {SAMPLER_FLAGS[k]: str(v) for k, v in sampler_flags.items() if v is not None})
    if model == TINY_MODEL:
        motion_defaults["flow_estimator"] = "tvl1"
    motion = MotionPromptConfig(**motion_defaults)
    motion = apply_overrides(motion, overrides)
    return sampler, motion


# name -> (where the command lives: "module:attribute", a click command or a function building one from the
# installed backbones' options; its one-line help, shown by `mpcore --help` without importing the module;
# whether it needs the plugins). A test checks each line against the command's own help.
BUILTIN_COMMANDS: dict[str, tuple[str, str, bool]] = {
    "diagnose": (
        "mpcore.cli.diagnose:build_command",
        "Measure where guidance can work before guiding a backbone.",
        True,
    ),
    "disc": (
        "mpcore.cli.disc:disc",
        "Train and evaluate flow discriminators (real vs generated video flow) on flow caches.",
        True,
    ),
    "drift": (
        "mpcore.cli.drift:drift",
        "Plot the learned token's cosine similarity to its init embedding per sampling step, mean "
        "+- std over the guided runs in MANIFESTS_OR_DIRS (optionally split top/bottom by an eval "
        "metric).",
        False,
    ),
    "eval": (
        "mpcore.cli.eval:eval_command",
        "Evaluate VIDEOS (files, or folders of .mp4/.gif/.webm/.avi and PNG-frame folders; "
        "`*_compare.*` files are skipped) with VBench's temporal metrics and other installed "
        "metrics.",
        True,
    ),
    "flows": (
        "mpcore.cli.flows:flows",
        "Evaluate and visualize optical-flow estimators (Middlebury EPE, warp error, color-coded "
        "flow), and extract flow datasets for training the discriminator.",
        True,
    ),
    "generate": (
        "mpcore.jobs.generate:build_command",
        "Generate one video per (prompt, seed) of a prompt list into a folder; resumable "
        "(complete items are skipped).",
        True,
    ),
    "plugins": (
        "mpcore.cli.main:plugins_command",
        "List installed backbones, flow estimators, discriminators, metrics and plugin commands, "
        "and where each comes from.",
        True,
    ),
    "report": (
        "mpcore.cli.report:report",
        "Write a self-contained HTML report of an output folder of `mpcore run` / `mpcore "
        "generate`.",
        False,
    ),
    "run": (
        "mpcore.cli.main:build_run_command",
        "Sample a video with MotionPrompt guidance (or the plain baseline) and write video, "
        "manifest and plots.",
        True,
    ),
    "weights": (
        "mpcore.cli.weights:weights",
        "Checkpoint keys and shapes a backbone expects (strict loading), and checking files "
        "against them.",
        True,
    ),
}


class LazyGroup(click.Group):
    """The ``mpcore`` group. A built-in command's module is imported, and the plugins loaded, only when that
    command is used: ``mpcore --help`` and ``mpcore --version`` import neither torch nor any plugin.

    Plugins may add commands (the ``register_commands`` hook); they load on first use of a name that is not
    built in, and ``mpcore plugins`` lists them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plugin_commands: dict[str, str] = {}  # command name -> plugin that added it
        self._plugins_loaded = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(BUILTIN_COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        if name not in BUILTIN_COMMANDS:
            self.load_plugins()  # a plugin may provide it
            return self.commands.get(name)
        target, _, needs_plugins = BUILTIN_COMMANDS[name]
        if needs_plugins:
            self.load_plugins()
        module_name, attribute = target.split(":")
        import importlib

        found = getattr(importlib.import_module(module_name), attribute)
        command = found if isinstance(found, click.Command) else found(backbone_options())
        self.commands[name] = command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from :data:`BUILTIN_COMMANDS` (no import) and the commands added so far."""
        limit = formatter.width - 6 - max(len(name) for name in self.list_commands(ctx))
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                rows.append((name, self.commands[name].get_short_help_str(limit)))
            else:
                rows.append((name, click.utils.make_default_short_help(BUILTIN_COMMANDS[name][1], limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)
        formatter.write_paragraph()
        formatter.write_text("Plugins may add commands: `mpcore plugins` lists them.")

    def load_plugins(self) -> plugins.PluginState:
        """Load the plugins (once), add their commands to this group, print their warnings."""
        state = plugins.load_plugins()
        if not self._plugins_loaded:
            self._plugins_loaded = True
            self.plugin_commands = plugins.register_commands(state, self)  # a raising hook: dropped, listed as failed
            for warning in state.warnings:
                echo(f"warning: {warning}")
        return state


def build_cli() -> click.Group:
    """The ``mpcore`` command group (:class:`LazyGroup`)."""

    @click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="mpcore")
    def cli():
        """MotionPrompt: natural motion for video diffusion models, at sampling time."""

    return cli


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(as_json: bool):
    """List installed backbones, flow estimators, discriminators, metrics and plugin commands, and where each comes
    from."""
    root = click.get_current_context().find_root().command
    state = root.load_plugins() if isinstance(root, LazyGroup) else plugins.load_plugins()
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
    for name, plugin_name in sorted(getattr(root, "plugin_commands", {}).items()):
        dist, version = state.sources.get(plugin_name, (None, None))
        rows.append({"name": name, "kind": "command", "version": version, "distribution": dist, "plugin": plugin_name,
                     "description": root.commands[name].get_short_help_str(80)})
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


def backbone_options() -> dict[str, tuple[click.Option, list[str]]]:
    """Option name -> (the click option, the backbones that take it), from every installed backbone's spec."""
    options: dict[str, tuple[click.Option, list[str]]] = {}
    for name, item in plugins.registry("backbone").items():
        for option in item.spec.options:
            if option.name in options:
                options[option.name][1].append(name)
            else:
                options[option.name] = (option, [name])
    return options


def with_backbone_options(command: click.Command, options: dict[str, tuple[click.Option, list[str]]]) -> click.Command:
    """``command`` taking the installed backbones' options too (``run``, ``generate``, ``diagnose steps``)."""
    command.params += [option for option, _ in options.values()]
    command.backbone_options = {k: owners for k, (_, owners) in options.items()}  # type: ignore[attr-defined]
    return command


def build_run_command(options: dict[str, tuple[click.Option, list[str]]]) -> click.Command:
    return with_backbone_options(click.Command("run", callback=_run, help=_run.__doc__, params=_run_params()), options)


def _run_params() -> list[click.Parameter]:
    from mpcore.interfaces import DEFAULT_BACKBONE, DEFAULT_MODEL, TINY_MODEL

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
    from mpcore.jobs import run as runner

    try:
        _run_checked(**kwargs)
    except runner.user_errors() as error:
        raise click.ClickException(str(error)) from None


def _run_checked(**kwargs):
    from mpcore.jobs import run as runner
    from mpcore.io import video

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
