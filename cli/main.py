"""The `polyhead` command line: the console script and `python -m cli`.

`polyhead head serve` goes straight to heads/serve_cli.py, which parses the same flags without
typer, rich or the other services' settings: what a head process imports is most of what it costs
in memory, and there is one per head (BENCHMARKS.md §5). Every other command is the typer app in
cli/commands.py."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:3] == ["head", "serve"]:
        from heads.serve_cli import main as head_serve

        sys.exit(head_serve(sys.argv[3:]))
    from cli.commands import main as commands

    commands()


if __name__ == "__main__":
    main()
