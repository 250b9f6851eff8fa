"""``python -m polyhead.inference_log.migrate [URL]``: apply the inference DB's migrations and exit.

Heads run it as a child process (sink.migrate_in_child) so that SQLAlchemy, which owns the schema,
never loads into a serving process. The URL comes from the argument, else from stdin (which keeps
a password out of ``ps``). Exit status 0 when the schema is current; the error on stderr otherwise.
"""

from __future__ import annotations

import sys

from polyhead.inference_log.schema import make_engine, migrate


def main(argv: list[str]) -> int:
    url = argv[0] if argv else sys.stdin.read().strip()
    engine = make_engine(url)
    try:
        applied = migrate(engine)
    finally:
        engine.dispose()
    print(f"applied migrations: {applied or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
