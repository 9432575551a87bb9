"""``mpcore weights``: the checkpoint key -> shape map a backbone expects, and checking a file against it.

Both work for backbones whose :class:`~mpcore.interfaces.BackboneSpec` sets ``expected_keys``; the map
is built without loading or allocating weights, so checking a multi-GB download takes seconds.
"""

from __future__ import annotations

import json
import math

import click

from mpcore import plugins
from mpcore.io.console import echo


def _spec(backbone: str):
    spec = plugins.get("backbone", backbone).spec
    if getattr(spec, "expected_keys", None) is None:
        supported = sorted(n for n, r in plugins.registry("backbone").items() if r.spec.expected_keys is not None)
        raise click.ClickException(
            f"backbone {backbone!r} does not describe its checkpoint keys; backbones that do: "
            f"{', '.join(supported) or 'none installed'}"
        )
    return spec


def _expected(backbone: str, variant: str | None, config: str | None):
    spec = _spec(backbone)
    try:
        return spec, spec.expected_keys(variant=variant, config=config)
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from None


def _options(command):
    for decorator in reversed([
        click.option("--backbone", required=True, help="Backbone plugin name (see `mpcore plugins`)."),
        click.option("--variant", default=None, help="A released variant of the backbone (backbone-specific)."),
        click.option("--config", "config", default=None, metavar="PATH",
                     help="Model config file the keys depend on (backbone-specific, e.g. a UNet config JSON)."),
    ]):
        command = decorator(command)
    return command


@click.group("weights")
def weights():
    """Checkpoint keys and shapes a backbone expects (strict loading), and checking files against them."""


@weights.command("expected")
@_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object {key: shape}.")
def expected_command(backbone: str, variant: str | None, config: str | None, as_json: bool):
    """Print the key -> shape map a checkpoint of BACKBONE must hold (built without allocating weights)."""
    try:
        _, keys = _expected(backbone, variant, config)
    except plugins.UnknownPluginError as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps({k: list(v) for k, v in keys.items()}, indent=1))
        return
    for key, shape in keys.items():
        click.echo(f"{key} {list(shape)}")
    echo(f"{len(keys)} keys, {sum(math.prod(s) for s in keys.values()):,} elements")


@weights.command("check")
@_options
@click.option("--limit", type=int, default=20, show_default=True, help="Keys listed per kind of difference.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def check_command(backbone: str, variant: str | None, config: str | None, limit: int, file: str):
    """Check FILE's keys and shapes against what BACKBONE loads strictly; exit code 1 with the
    differences (missing / unexpected / shape mismatch) if they differ."""
    from mpcore.io.weights import CheckpointMismatchError, read_state_dict, shapes, state_dict_diff

    try:
        spec, keys = _expected(backbone, variant, config)
        read = spec.read_weights or read_state_dict
        found = shapes(read(file))
    except (plugins.UnknownPluginError, CheckpointMismatchError, OSError, RuntimeError) as error:
        raise click.ClickException(str(error)) from None
    diff = state_dict_diff(keys, found, limit=limit)
    if diff:
        click.echo(f"{file} does not match backbone {backbone}:\n{diff}")
        raise SystemExit(1)
    click.echo(f"{file}: OK, all {len(keys)} keys of backbone {backbone} match in name and shape")
