"""Server processes for the deploy tests (checkout, installed wheel, image), started as a user does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import re
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fer_async.labels import EMOTIONS

# TensorFlow's import and the weights load, in several processes at once on a possibly busy CPU.
START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 45.0
REPO_ROOT = Path(__file__).resolve().parents[2]


def tail(log: Path, limit: int = 3000) -> str:
    """The end of a server log, for failure messages."""
    return log.read_text(errors="replace")[-limit:]


def child_pids(pid: int) -> set[int]:
    """Direct children of `pid` (Linux /proc), empty when it has none or is gone."""
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children.update(int(part) for part in (task / "children").read_text().split())
        except OSError:
            continue
    return children


def descendant_pids(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in child_pids(todo.pop()) - found:
            found.add(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an exited child nobody has reaped yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "?")
    return state not in ("Z", "X")


async def healthz(session: aiohttp.ClientSession, base: str) -> dict[str, Any] | None:
    """/healthz of `base`, or None while nothing answers there."""
    try:
        async with session.get(f"{base}/healthz", timeout=aiohttp.ClientTimeout(total=10)) as resp:
            if resp.status != 200:
                return None
            return dict(await resp.json())
    except (aiohttp.ClientError, TimeoutError):
        return None


def installed_env() -> dict[str, str]:
    """Our environment without what would put this checkout or our venv on a program's path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


@asynccontextmanager
async def server_process(
    args: list[str],
    log: Path,
    port: int,
    env: dict[str, str] | None = None,
    program: Sequence[str] | None = None,
    cwd: Path | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m fer_async --host 127.0.0.1 --port PORT ARGS` from this checkout, or PROGRAM
    (an installed `fer-async`, deploy/image/run.sh) with nothing of the checkout on its path;
    logging to `log`, killed if still running at the end. `env`: variables added to the environment."""
    if program is None:
        program, base_env = (sys.executable, "-m", "fer_async"), {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    else:
        base_env = installed_env()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *[*program, "--host", "127.0.0.1", "--port", str(port), *args],
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            env={**base_env, **(env or {})},
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            for pid in descendant_pids(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            proc.kill()
            await proc.wait()


async def wait_until_serving(base: str, proc: asyncio.subprocess.Process, log: Path) -> dict[str, Any]:
    """The first /healthz answer of the server at `base`; fails if it exits or takes too long."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            if proc.returncode is not None:
                pytest.fail(f"the server exited during start-up:\n{tail(log)}")
            health = await healthz(session, base)
            if health is not None:
                return health
            await asyncio.sleep(0.5)
    pytest.fail(f"the server did not come up in {START_TIMEOUT_S:.0f} s:\n{tail(log)}")


async def check_serves_the_page_and_a_photo(base: str, static_dir: Path, face_jpeg: bytes) -> None:
    """The server at `base` serves the page with its styles and scripts, the modules they import
    included (the bytes of `static_dir`'s files), the clip list, and finds the face in `face_jpeg`:
    what a user of an installed copy sees first."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/") as resp:
            assert resp.status == 200
            page = await resp.text()
        todo = re.findall(r'(?:src|href)="/static/([^"]+)"', page)
        assert any(asset.endswith(".js") for asset in todo), page
        fetched: set[str] = set()
        while todo:
            asset = todo.pop()
            async with session.get(f"{base}/static/{asset}") as resp:
                assert resp.status == 200, asset
                served = await resp.read()
            assert served == (static_dir / asset).read_bytes(), asset
            fetched.add(asset)
            if asset.endswith(".js"):  # an ES module: what it imports, relative to it
                for name in re.findall(r'^import\b[^;]*?\bfrom\s*"([^"]+)"', served.decode(), re.MULTILINE):
                    assert name.startswith(("./", "../")), (asset, name)
                    imported = posixpath.normpath(posixpath.join(posixpath.dirname(asset), name))
                    if imported not in fetched:
                        todo.append(imported)

        clips = [path.name for path in (static_dir / "videos").iterdir()]
        async with session.get(f"{base}/videos") as resp:
            assert resp.status == 200
            listing = await resp.text()
        assert clips and all(name in listing for name in clips), listing

        headers = {"Content-Type": "image/jpeg"}
        async with session.post(f"{base}/api/predict", data=face_jpeg, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
    assert len(body["faces"]) == 1, body
    assert list(body["faces"][0]["scores"]) == list(EMOTIONS)
