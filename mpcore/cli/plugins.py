"""``mpcore plugins``: what the installed plugins provide, and the plugins that failed to load."""

from __future__ import annotations

import json

import click

from mpcore import plugins


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(as_json: bool):
    """List installed backbones, flow estimators, discriminators, metrics, guidances and plugin commands, and where
    each comes from."""
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
