"""What the command modules share: option types, turning mpcore errors into click's, backbone options."""

from __future__ import annotations

import copy
import re

import click

from mpcore import plugins

def run_options(kwargs: dict):
    """A command's keyword arguments (``run``'s options) as :class:`mpcore.jobs.options.RunOptions`."""
    from mpcore.jobs.options import FREE_INIT_FLAGS, RunOptions

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


_OWNERS_TAG = re.compile(r"^\[[^\]]*\]\s*")
"""A help text's leading ``[backbone, ...]`` tag (the plugins write one; :func:`backbone_options` rewrites it)."""


def backbone_options() -> dict[str, tuple[click.Option, list[str]]]:
    """Option name -> (the click option, the backbones that take it), from every installed backbone's spec.

    An option several backbones declare is one option (the first declaration's type and default) whose help says
    which backbones take it: each distinct text once, tagged with the backbones that declared it
    (``[videocrafter2, dynamicrafter] CFG rescale phi ...``; ``[cogvideox] ...; [wan] ...`` when their texts differ).
    A plugin's own ``[...]`` tag is replaced by the declaring backbones' names, so two plugins (or one plugin
    registering two backbones) declaring the same text show it once."""
    options: dict[str, tuple[click.Option, list[str]]] = {}
    texts: dict[str, dict[str, list[str]]] = {}  # option -> help text without its tag -> backbones declaring it
    for name, item in plugins.registry("backbone").items():
        for option in item.spec.options:
            if option.name in options:
                if name not in options[option.name][1]:
                    options[option.name][1].append(name)
            else:
                options[option.name] = (option, [name])
            owners = texts.setdefault(option.name, {}).setdefault(_OWNERS_TAG.sub("", option.help or ""), [])
            if name not in owners:
                owners.append(name)
    for key, (option, owners) in options.items():
        helps = "; ".join(f"[{', '.join(declared)}] {text}".rstrip() for text, declared in texts[key].items())
        if helps != option.help:
            option = copy.copy(option)  # the plugins' own option objects stay as declared
            option.help = helps
        options[key] = (option, owners)
    return options


def with_backbone_options(command: click.Command, options: dict[str, tuple[click.Option, list[str]]]) -> click.Command:
    """``command`` taking the installed backbones' options too (``run``, ``generate``, ``diagnose steps``).

    A backbone option whose name or flag the command already has is left out (the command's own option wins, so
    ``--help`` shows each flag once and click never sees two parameters of one name)."""
    names = {param.name for param in command.params}
    flags = {flag for param in command.params for flag in param.opts + param.secondary_opts}
    for option, _ in options.values():
        own = set(option.opts + option.secondary_opts)
        if option.name in names or own & flags:
            continue
        command.params.append(option)
        names.add(option.name)
        flags |= own
    return command
