"""CLI options generated from a settings class: each setting is declared once, in its settings
object, and `--option` flags, env vars and the YAML file all follow from that declaration."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import typer

from polyhead.settings import PolyheadSettings

_SIMPLE = (str, int, float, bool, Path)


def _cli_type(annotation: Any) -> type | None:
    """The option type for a field, or None for fields only a file or env var can set (lists, dicts)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _cli_type(args[0]) if len(args) == 1 else (str if all(_cli_type(a) for a in args) else None)
    if origin is Literal:
        return str
    return annotation if annotation in _SIMPLE else None


def settings_options(settings_cls: type[PolyheadSettings], *, exclude: tuple[str, ...] = (),
                     arguments: dict[str, str] | None = None) -> Callable:
    """Decorate a typer command `fn(settings, ...)`: adds `--config FILE` and one option per simple
    field of `settings_cls` (help = the field's description), and calls `fn` with the loaded settings.

    `arguments` maps the command's own parameters onto settings fields (e.g. a positional path)."""
    arguments = arguments or {}

    def decorate(fn: Callable) -> Callable:
        own = [p for p in inspect.signature(fn).parameters.values() if p.name != "settings"]
        taken = {p.name for p in own} | set(arguments.values()) | set(exclude)
        generated = [inspect.Parameter(
            "settings_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
            default=typer.Option(None, "--config", "-c", exists=True, dir_okay=False,
                                 help=f"YAML settings file (section `{settings_cls.section}:`)"))]
        for name, field in settings_cls.model_fields.items():
            kind = _cli_type(field.annotation)
            if name in taken or kind is None:
                continue
            flag = "--" + name.replace("_", "-")
            decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
            generated.append(inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
                default=typer.Option(None, *decls, help=field.description or "", show_default=False)))

        @functools.wraps(fn)
        def command(**kwargs: Any):
            settings_file = kwargs.pop("settings_file")
            mine = {p.name: kwargs.pop(p.name) for p in own}
            overrides = {**kwargs, **{field: mine[param] for param, field in arguments.items()}}
            return fn(settings_cls.load(settings_file, **overrides), **mine)

        command.__signature__ = inspect.Signature(own + generated)
        return command

    return decorate
