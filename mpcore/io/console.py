"""Messages to the user: one line to stderr (stdout is kept for results a command prints)."""

from __future__ import annotations

import click


def echo(message: str) -> None:
    """Print ``message`` (one line) to stderr."""
    click.echo(message, err=True)
