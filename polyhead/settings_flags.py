"""Which settings become command-line flags, and a light argparse parser built from them.

The one walk over a settings class (`settings_flags`) feeds both the typer commands
(cli/settings_cli.py) and `parse_settings`, the parser of the head's serving entry, which must
not import typer, click or rich (a head process is sized by what it imports: BENCHMARKS.md §5)."""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from polyhead.settings import PolyheadSettings

_SIMPLE = (str, int, float, bool, Path)


@dataclass(frozen=True)
class Flag:
    field: str  # the settings field it sets
    kind: type  # str, int, float, bool or Path
    decls: tuple[str, ...]  # typer's declarations: "--name", or "--name/--no-name" for a bool
    help: str


def cli_type(annotation: Any) -> type | None:
    """The option type for a field, or None for fields only a file or env var can set (lists, dicts)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return cli_type(args[0]) if len(args) == 1 else (str if all(cli_type(a) for a in args) else None)
    if origin is Literal:
        return str
    return annotation if annotation in _SIMPLE else None


def settings_flags(settings_cls: type[PolyheadSettings], taken: set[str] = frozenset()) -> list[Flag]:
    """One flag per simple field of `settings_cls` not in `taken`, in declaration order."""
    flags = []
    for name, field in settings_cls.model_fields.items():
        kind = cli_type(field.annotation)
        if name in taken or kind is None:
            continue
        flag = "--" + name.replace("_", "-")
        flags.append(Flag(name, kind, (f"{flag}/--no-{flag[2:]}",) if kind is bool else (flag,),
                          field.description or ""))
    return flags


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value!r} is not an existing file")
    return path


def settings_parser(settings_cls: type[PolyheadSettings], *, prog: str, description: str,
                    positional: tuple[str, str] | None = None) -> argparse.ArgumentParser:
    """The flags the typer command of `settings_cls` has: `--settings/-s FILE`, one per settings_flags(),
    and `positional` = (settings field, help): existing files, any number."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    if positional:
        parser.add_argument(positional[0], nargs="*", type=_existing_file, help=positional[1])
    parser.add_argument("--settings", "-s", dest="settings_file", type=_existing_file, default=None, metavar="FILE",
                        help=f"YAML settings file (section `{settings_cls.section}:`)")
    for flag in settings_flags(settings_cls, {positional[0]} if positional else set()):
        dest = {"dest": flag.field, "default": None, "help": flag.help}
        if flag.kind is bool:
            parser.add_argument(flag.decls[0].split("/")[0], action=argparse.BooleanOptionalAction, **dest)
        else:
            parser.add_argument(flag.decls[0], type=flag.kind, metavar=flag.kind.__name__.upper(), **dest)
    return parser


def parse_settings(settings_cls: type[PolyheadSettings], argv: list[str], **parser_args: Any) -> PolyheadSettings:
    """Settings from `argv` (flags as settings_parser's); options not given fall through to env/file/defaults."""
    args = vars(settings_parser(settings_cls, **parser_args).parse_args(argv))
    return settings_cls.load(args.pop("settings_file"), **args)
