"""`python -m fer_async.healthcheck`: exit 0 when the server this environment configures answers /healthz.

A container's HEALTHCHECK runs it beside the server (deploy/Dockerfile). It reads the server's
own settings from the same `FER_*` variables, so it asks on the server's port, over https when
`FER_CERT` is set, and on the loopback address when the server listens on every address. The
certificate is not checked: it names the public host, and this only asks whether the process on
this machine answers. A /healthz that is not 200 (503: degraded) counts as unhealthy, as before.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request

from fer_async.config import Settings

TIMEOUT_S = 4.0
_EVERY_ADDRESS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def health_url(settings: Settings) -> str:
    return settings.replace(host=_EVERY_ADDRESS.get(settings.host, settings.host)).url + "healthz"


def main() -> int:
    settings = Settings.from_args([], env=os.environ, prog="python -m fer_async.healthcheck")
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
