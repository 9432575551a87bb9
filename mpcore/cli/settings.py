"""``mpcore settings [NAME...]``: each guidance's ``-o KEY=VALUE`` settings, read from its config dataclass
(``GuidanceSpec.config_class``): the type (its annotations, as ``-o`` parses them), the default (the class's,
or a backbone's with ``--backbone``), the allowed values where the type says them (``Literal``) and what the
setting does (the string after the field in the class source, when the source is available). No model loads."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import shutil
import textwrap
import types
import typing
from typing import Any

import click

from mpcore import plugins


def type_name(hint: Any) -> str:
    """An annotation as a user reads it: ``float``, ``int | None``, ``tuple[int, int]``, ``str`` for a ``Literal``
    of strings (its values are the allowed ones)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(dict.fromkeys(type(a).__name__ for a in args))
    if origin is not None and args:
        name = getattr(origin, "__name__", str(origin).replace("typing.", ""))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def allowed_values(hint: Any) -> list[Any] | None:
    """The values a ``Literal`` annotation allows (also inside ``X | None``: then None too); None: not stated."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return list(args)
    if origin in (typing.Union, types.UnionType):
        found = [allowed_values(a) for a in args if a is not type(None)]
        if any(values is not None for values in found):
            return [v for values in found for v in values or []] + ([None] if type(None) in args else [])
    return None


def attribute_docs(config_class: type) -> dict[str, str]:
    """The string literal right after each field in the source of ``config_class`` and its dataclass bases (a
    subclass's wins); {} when the source cannot be read (e.g. a class built at run time)."""
    docs: dict[str, str] = {}
    for klass in reversed(config_class.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = next((node.body for node in tree.body if isinstance(node, ast.ClassDef)), [])
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def option_text(value: Any) -> str:
    """A value as ``-o KEY=VALUE`` takes it: none, true/false, items joined by ','."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(option_text(v) for v in value)
    return str(value) if value != "" else '""'


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def describe_settings(config_class: type | None, defaults: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One dict per setting of ``config_class`` (its init fields, in order): name, type, default (``defaults``'s
    value where given, e.g. a backbone's), required (no default), allowed (from a ``Literal``, else None) and doc
    (the attribute docstring, else "")."""
    if config_class is None:
        return []
    hints = typing.get_type_hints(config_class)
    docs = attribute_docs(config_class)
    rows = []
    for field in dataclasses.fields(config_class):
        if not field.init:
            continue
        hint = hints.get(field.name, field.type)
        default = (defaults or {}).get(field.name, _default(field))
        rows.append({"name": field.name, "type": type_name(hint),
                     "default": None if default is dataclasses.MISSING else default,
                     "required": default is dataclasses.MISSING, "allowed": allowed_values(hint),
                     "doc": docs.get(field.name, "")})
    return rows


def guidance_settings(spec: Any, defaults: dict[str, Any] | None = None
                      ) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(:func:`describe_settings` of the guidance ``spec``, None) or, when a plugin's config class cannot be read
    (e.g. an annotation naming nothing), (None, why): a listing of every guidance goes on."""
    try:
        return describe_settings(spec.config_class, defaults), None
    except Exception as error:  # noqa: BLE001 - a third party's class must not break the listing
        return None, f"{type(error).__name__}: {error}"


def backbone_defaults(spec: Any, backbone: str | None, model: str | None, state: Any) -> dict[str, Any]:
    """The settings ``spec.defaults_for`` gives for ``backbone`` (and ``model``); {} without a backbone."""
    if backbone is None or spec.defaults_for is None:
        return {}
    found = plugins.registry("backbone", state).get(backbone)
    if found is None:
        installed = ", ".join(sorted(plugins.registry("backbone", state))) or "none"
        raise click.BadParameter(f"unknown backbone {backbone!r}; installed: {installed}", param_hint="--backbone")
    return dict(spec.defaults_for(found.spec, model) or {})


def format_setting(row: dict[str, Any], width: int) -> list[str]:
    """``  name: type = default  (allowed: a | b)`` and the doc wrapped below it."""
    line = f"  {row['name']}: {row['type']}" + (" (required)" if row["required"] else
                                                 f" = {option_text(row['default'])}")
    if row["allowed"] is not None:
        line += "  (allowed: " + " | ".join(option_text(v) for v in row["allowed"]) + ")"
    lines = [line]
    for paragraph in row["doc"].split("\n\n") if row["doc"] else []:
        lines += textwrap.wrap(" ".join(paragraph.split()), width, initial_indent=" " * 6,
                               subsequent_indent=" " * 6)
    return lines


@click.command("settings")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--backbone", default=None, help="Show the defaults this backbone gives (a guidance may differ "
              "per backbone, e.g. MotionPrompt's paper settings); default: the guidance's own.")
@click.option("--model", default=None, help="With --backbone: the model whose defaults to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def settings_command(names: tuple[str, ...], backbone: str | None, model: str | None, as_json: bool):
    """List each guidance's -o KEY=VALUE settings: type, default, allowed values and what each does."""
    root = click.get_current_context().find_root().command
    state = root.load_plugins() if hasattr(root, "load_plugins") else plugins.load_plugins()
    registered = plugins.registry("guidance", state)
    unknown = [name for name in names if name not in registered]
    if unknown:
        raise click.BadParameter(f"unknown guidance {unknown[0]!r}; installed: {', '.join(sorted(registered))}",
                                 param_hint="NAME")
    listed = []
    for name in names or sorted(registered):
        spec = registered[name].spec
        rows, error = guidance_settings(spec, backbone_defaults(spec, backbone, model, state))
        listed.append({"name": name, "description": spec.description, "distribution": registered[name].distribution,
                       "backbone": backbone, "model": model if backbone else None, "settings": rows,
                       **({"settings_error": error} if error else {})})
    if as_json:
        click.echo(json.dumps({"guidances": listed}, indent=2, default=str))
        return
    width = min(shutil.get_terminal_size((100, 24)).columns, 110) - 8
    for number, item in enumerate(listed):
        where = f" (defaults for --backbone {backbone}{f' --model {model}' if model else ''})" if backbone else ""
        heading = f"{item['name']}{where}" + (f": {item['description']}" if item["description"] else "")
        click.echo(("\n" if number else "") + heading)
        if item.get("settings_error"):
            click.echo(f"  settings unreadable: {item['settings_error']}")
        elif not item["settings"]:
            click.echo("  no settings")
        for row in item["settings"] or []:
            click.echo("\n".join(format_setting(row, width)))
