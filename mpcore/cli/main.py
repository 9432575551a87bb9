"""The ``mpcore`` command group (click). ``python -m mpcore`` is the same program.

Every check that can fail cheaply (unknown plugin, invalid config, unwritable output, missing
files) runs before any model is loaded. Nothing here imports torch or a command module at import
time: ``mpcore --help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from mpcore import __version__, plugins
from mpcore.cli.common import backbone_options
from mpcore.io.console import echo

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
        "mpcore.cli.generate:build_command",
        "Generate one video per (prompt, seed) of a prompt list into a folder; resumable "
        "(complete items are skipped).",
        True,
    ),
    "plugins": (
        "mpcore.cli.plugins:plugins_command",
        "List installed backbones, flow estimators, discriminators, metrics, guidances and plugin commands, "
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
        "mpcore.cli.run:build_run_command",
        "Sample a video with MotionPrompt guidance (or the plain baseline) and write video, "
        "manifest and plots.",
        True,
    ),
    "settings": ("mpcore.cli.settings:settings_command", "List each guidance's -o KEY=VALUE settings: type, default, allowed values and what each does.", True),  # noqa: E501
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


def main() -> None:
    build_cli()(prog_name="mpcore")


if __name__ == "__main__":
    main()
