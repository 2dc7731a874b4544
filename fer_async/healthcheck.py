"""`python -m fer_async.healthcheck [SERVER OPTIONS]`: exit 0 when the server so configured answers /healthz.

A container's HEALTHCHECK runs it beside the server (deploy/Dockerfile). It reads the server's
own settings: the options given to it, else those of the container's first process when that is
the server (`/proc/1/cmdline`: `docker run IMAGE fer-async --port 9000`), with the same `FER_*`
variables. So it asks on the server's port, over https when the server has a certificate, and
on the loopback address when the server listens on every address. The certificate is not
checked: it names the public host, and this only asks whether the process on this machine
answers. A /healthz that is not 200 (503: degraded) counts as unhealthy.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from fer_async.config import Settings

TIMEOUT_S = 4.0
_EVERY_ADDRESS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def health_url(settings: Settings) -> str:
    return settings.replace(host=_EVERY_ADDRESS.get(settings.host, settings.host)).url + "healthz"


def server_options(command: Sequence[str]) -> list[str] | None:
    """The options of a server's command line (`fer-async ...`, `python -m fer_async ...`); None for another program."""
    for at, word in enumerate(command):
        if Path(word).name == "fer-async":
            return list(command[at + 1 :])
        if word == "-m" and command[at + 1 : at + 2] == ["fer_async"]:
            return list(command[at + 2 :])
    return None


def _first_process_options() -> list[str]:
    """The server's options when it is the container's first process (no options otherwise)."""
    try:
        command = Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []
    return server_options(command[:-1] if command[-1:] == [""] else command) or []


def main(argv: Sequence[str] | None = None) -> int:
    options = list(sys.argv[1:] if argv is None else argv) or _first_process_options()
    settings = Settings.from_args(options, env=os.environ, prog="python -m fer_async.healthcheck")
    url = health_url(settings)
    context = ssl._create_unverified_context() if settings.tls else None  # see the docstring
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as response:
            status = response.status
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
