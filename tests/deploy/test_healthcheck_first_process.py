"""The image's HEALTHCHECK beside a server started with options, as `docker run IMAGE fer-async --port N` starts it.

In a container the server is the first process of its own PID namespace, and the check runs in
that namespace too (`docker exec`). `unshare --pid --fork --mount-proc` and `nsenter` make the
same here, without an image: the check finds the server's port in /proc/1/cmdline. Reading
`FER_*` variables alone, it asked the default port 8080 and called a serving server unhealthy.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fer_async.bench.harness import free_port

from .procs import REPO_ROOT, child_pids, server_process, wait_until_serving


def _namespaces_available() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return False
    trial = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return trial.returncode == 0


async def test_the_check_reads_the_port_off_the_first_process(tmp_path: Path) -> None:
    if not _namespaces_available():
        pytest.skip("needs root, unshare and nsenter (util-linux) to give the server a PID namespace of its own")
    port, log = free_port(), tmp_path / "server.log"
    program = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "fer_async"]
    clean = {name: value for name, value in os.environ.items() if not name.startswith("FER_")}
    async with server_process(["--detector", "haar"], log, port, program=program, cwd=REPO_ROOT) as proc:
        await wait_until_serving(f"http://127.0.0.1:{port}", proc, log)
        (first,) = child_pids(proc.pid)  # the server: process 1 of the new namespace
        check = await asyncio.create_subprocess_exec(
            *["nsenter", "--target", str(first), "--pid", "--mount", f"--wd={REPO_ROOT}"],
            *[sys.executable, "-m", "fer_async.healthcheck"],
            env=clean,
            stderr=asyncio.subprocess.PIPE,
        )
        _, said = await check.communicate()
        assert check.returncode == 0, said.decode(errors="replace")
