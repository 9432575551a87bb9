"""``mpcore plugins``: what the installed plugins provide (each guidance with the names of its ``-o`` settings;
``mpcore settings NAME`` describes them), and the plugins that failed to load."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import click

from mpcore import plugins
from mpcore.cli.settings import guidance_settings


def _settings_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Each guidance and its settings' names, wrapped, under a line saying where their details are."""
    guidances = [r for r in rows if r["kind"] == "guidance"]
    if not guidances:
        return []
    lines = ["", "guidance settings (-o KEY=VALUE; `mpcore settings NAME` gives type, default, allowed values, "
                 "what each does):"]
    for row in guidances:
        if row.get("settings_error"):
            names = f"(unreadable: {row['settings_error']})"
        else:
            names = ", ".join(s["name"] for s in row["settings"]) or "(none)"
        lines += textwrap.wrap(f"{row['name']}: {names}", 100, initial_indent="  ", subsequent_indent="    ")
    return lines


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(as_json: bool):
    """List installed backbones, flow estimators, discriminators, metrics, guidances and plugin commands, and where
    each comes from.

    Each guidance is listed with the names of its -o settings (`mpcore settings NAME`: their types, defaults,
    allowed values and what each does)."""
    root = click.get_current_context().find_root().command
    state = root.load_plugins() if hasattr(root, "load_plugins") else plugins.load_plugins()
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
            if kind == "guidance":
                rows[-1]["settings"], error = guidance_settings(item.spec)
                if error:
                    rows[-1]["settings_error"] = error
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
    for line in _settings_lines(rows):
        click.echo(line)
    for item in failed:
        click.echo(f"FAILED {item['plugin']}: {item['error']}")
