"""CLI options generated from a settings class: each setting is declared once, in its settings
object, and `--option` flags, env vars and the YAML file all follow from that declaration."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from polyhead.settings import PolyheadSettings
from polyhead.settings_flags import settings_flags


def settings_options(settings_cls: type[PolyheadSettings], *, exclude: tuple[str, ...] = (),
                     arguments: dict[str, str] | None = None) -> Callable:
    """Decorate a typer command `fn(settings, ...)`: adds `--settings FILE` and one option per simple
    field of `settings_cls` (help = the field's description), and calls `fn` with the loaded settings.

    `arguments` maps the command's own parameters onto settings fields (e.g. a positional path)."""
    arguments = arguments or {}

    def decorate(fn: Callable) -> Callable:
        own = [p for p in inspect.signature(fn).parameters.values() if p.name != "settings"]
        taken = {p.name for p in own} | set(arguments.values()) | set(exclude)
        generated = [inspect.Parameter(
            "settings_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
            default=typer.Option(None, "--settings", "-s", exists=True, dir_okay=False,
                                 help=f"YAML settings file (section `{settings_cls.section}:`)"))]
        for flag in settings_flags(settings_cls, taken):
            generated.append(inspect.Parameter(
                flag.field, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[flag.kind],
                default=typer.Option(None, *flag.decls, help=flag.help, show_default=False)))

        @functools.wraps(fn)
        def command(**kwargs: Any):
            settings_file = kwargs.pop("settings_file")
            mine = {p.name: kwargs.pop(p.name) for p in own}
            overrides = {**kwargs, **{field: mine[param] for param, field in arguments.items()}}
            return fn(settings_cls.load(settings_file, **overrides), **mine)

        command.__signature__ = inspect.Signature(own + generated)
        return command

    return decorate
