"""`polyhead head serve`: the head's serving entry. It imports no typer, click or rich (cli/main.py
dispatches here before loading the typer app); its flags are generated from HeadSettings like every
other `serve` command's (polyhead/settings_flags.py)."""

from __future__ import annotations

import sys

from heads.settings import HeadSettings
from polyhead.settings_flags import parse_settings, settings_parser

HEAD_CONFIGS_HELP = "configs/heads/<name>.yaml; several (or --heads) = one packed process"
PARSER = {"prog": "polyhead head serve", "positional": ("config", HEAD_CONFIGS_HELP),
          "description": "Serve one head, or several packed in one process (numpy only: never imports TensorFlow)."}


def serve_head(settings: HeadSettings) -> int:
    """Serve until stopped; 2 when the settings name no head to serve."""
    from heads.http_server import serve
    from polyhead.logging import configure_logging

    configure_logging(settings.log_level, settings.json_logs)
    try:
        settings.config_paths()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


def parser():
    return settings_parser(HeadSettings, **PARSER)


def main(argv: list[str] | None = None) -> int:
    return serve_head(parse_settings(HeadSettings, sys.argv[1:] if argv is None else argv, **PARSER))
