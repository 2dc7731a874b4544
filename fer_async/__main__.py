"""`python -m fer_async` / `fer-async`: parse settings, set up logging, serve.

One server process (`fer_async.serving.serve`), or with `--workers N` a supervisor of N of them
(`fer_async.workers`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from fer_async.config import Settings
from fer_async.serving import configure_logging, serve


def program_name() -> str:
    """How this process was started, for --help and errors: `python -m fer_async`, or the installed `fer-async`."""
    started_as = Path(sys.argv[0]).name
    return "python -m fer_async" if started_as in ("__main__.py", "") else started_as


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings.from_args(argv, prog=program_name())
    configure_logging(settings)
    if settings.workers > 1:
        from fer_async.workers import supervise

        return supervise(settings)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
