"""What the command modules share: option types, turning mpcore errors into click's, backbone options."""

from __future__ import annotations

import copy

import click

from mpcore import plugins

FREE_INIT_FLAGS = {"free_init": "iterations", "free_init_method": "method", "free_init_order": "order",
                   "free_init_spatial_stop": "spatial_stop_frequency", "free_init_temporal_stop": "temporal_stop_frequency"}
"""``--free-init*`` option -> :class:`mpcore.config.FreeInitConfig` field."""


def run_options(kwargs: dict):
    """A command's keyword arguments (``run``'s options) as :class:`mpcore.jobs.options.RunOptions`."""
    from mpcore.jobs.options import RunOptions

    kwargs = dict(kwargs)
    free_init = {field: kwargs.pop(flag, None) for flag, field in FREE_INIT_FLAGS.items()}
    return RunOptions.from_flags(kwargs, free_init)


def as_click_error(error: Exception) -> click.ClickException:
    """An mpcore error as click shows it: an invalid option exits 2 naming the option, anything else the user can
    fix exits 1 with its message (no traceback)."""
    from mpcore.jobs.options import OptionError

    if isinstance(error, OptionError):
        if error.option:
            return click.BadParameter(str(error), param_hint=error.option)
        return click.UsageError(str(error))
    return click.ClickException(str(error))


def device_from_option(device: str | None):
    """``--device`` -> torch device (:func:`mpcore.jobs.options.resolve_device`), as a click error if invalid."""
    from mpcore.jobs.options import OptionError, resolve_device

    try:
        return resolve_device(device)
    except OptionError as error:
        raise as_click_error(error) from None


def backbone_options() -> dict[str, tuple[click.Option, list[str]]]:
    """Option name -> (the click option, the backbones that take it), from every installed backbone's spec.
    An option several backbones declare is one option (the first declaration's type and default) whose
    help joins every declaring backbone's own text."""
    options: dict[str, tuple[click.Option, list[str]]] = {}
    helps: dict[str, list[str]] = {}
    for name, item in plugins.registry("backbone").items():
        for option in item.spec.options:
            if option.name in options:
                options[option.name][1].append(name)
            else:
                options[option.name] = (option, [name])
            helps.setdefault(option.name, []).append(option.help or f"[{name}]")
    for key, (option, owners) in options.items():
        if len(owners) > 1:
            shared = copy.copy(option)  # the plugins' own option objects stay as declared
            shared.help = "; ".join(helps[key])
            options[key] = (shared, owners)
    return options


def with_backbone_options(command: click.Command, options: dict[str, tuple[click.Option, list[str]]]) -> click.Command:
    """``command`` taking the installed backbones' options too (``run``, ``generate``, ``diagnose steps``)."""
    command.params += [option for option, _ in options.values()]
    return command
