"""deploy/nginx/fer_async.conf in front of two real replicas: spread, failover, MJPEG reconnect,
analysis jobs answered by either replica, per-client limits.

Debian's nginx runs as deploy/nginx/run-local.sh starts it: its own prefix, config, pid, logs and
temp dirs in the test's tmp dir, `daemon off`, listening on a free loopback port; the shipped
site config is used as it is, with only the upstream servers and the listen address replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from analyze_clips import face_clip
from testsupport import eventually

from fer_async.bench.harness import free_port
from fer_async.bench.report import same_processes

from .procs import REPO_ROOT, healthz, server_process, tail, wait_until_serving

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)
RUN_LOCAL = REPO_ROOT / "deploy" / "nginx" / "run-local.sh"
VIDEO = "demo.mp4"  # ships in static/videos, the replicas' default --video-dir
CLIENTS = 4
VIEWERS = 2
FAILOVER_S = 5.0  # the bound: a dead replica's clients are served by the other within it
RECONNECT_DELAY_S = 0.5  # what the page waits before its first reconnect (RECONNECT_MIN_MS)

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx; .ci/run does)")


@contextlib.asynccontextmanager
async def balancer(prefix: Path, upstream_ports: list[int]) -> AsyncIterator[str]:
    """deploy/nginx/run-local.sh (the shipped config, in the foreground, everything under `prefix`)
    in front of `upstream_ports`; its base URL once /healthz answers through it. Stopped with SIGTERM: exit 0."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = ["bash", str(RUN_LOCAL), str(prefix), str(port), *map(str, upstream_ports)]
    nginx = await asyncio.create_subprocess_exec(*command, stderr=asyncio.subprocess.DEVNULL)
    try:
        await eventually(lambda: (prefix / "nginx.pid").exists() or nginx.returncode is not None, 10, "nginx start")
        assert nginx.returncode is None, tail(prefix / "error.log")
        async with aiohttp.ClientSession() as session:
            health = None
            for _ in range(50):
                health = await healthz(session, base)
                if health is not None:
                    break
                await asyncio.sleep(0.1)
        assert health is not None and health["status"] == "ok", tail(prefix / "error.log")
        yield base
    finally:
        nginx.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(nginx.wait(), 20)
    assert code == 0, tail(prefix / "error.log")


async def first_mjpeg_part(resp: aiohttp.ClientResponse) -> bytes:
    """Read a multipart/x-mixed-replace stream up to the end of its first JPEG part."""
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
    length = None
    while True:
        line = await resp.content.readline()
        assert line, "the stream ended before a part"
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        elif line == b"\r\n" and length is not None:
            jpeg = await resp.content.readexactly(length)
            assert jpeg[:2] == b"\xff\xd8"
            return jpeg


async def read_until_end(resp: aiohttp.ClientResponse) -> None:
    """Drain a stream until it ends, however it ends."""
    try:
        while await resp.content.read(65536):
            pass
    except (aiohttp.ClientError, ConnectionError):
        pass


async def served(session: aiohttp.ClientSession, base: str, frame: bytes) -> aiohttp.ClientWebSocketResponse:
    """A new WebSocket through nginx that has answered one real frame."""
    ws = await session.ws_connect(f"{base}/ws", origin=base, heartbeat=None)
    hello = await ws.receive_json(timeout=30)
    assert hello["type"] == "hello", hello
    await check_served(ws, frame)
    return ws


async def check_served(ws: aiohttp.ClientWebSocketResponse, frame: bytes) -> None:
    await ws.send_bytes(frame)
    reply = await ws.receive_json(timeout=30)
    assert reply["type"] == "result" and reply["faces"], reply


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[list[tuple[int, asyncio.subprocess.Process, Path]]]:
    ports = [free_port(), free_port()]
    while ports[1] == ports[0]:
        ports[1] = free_port()
    logs = [tmp_path / f"replica{i}.log" for i in range(2)]
    # Two replicas on one host sharing one results directory, as deploy/README.md shows.
    args = ["--max-clients", "16", "--results-dir", str(tmp_path / "results")]
    async with (
        server_process(args, logs[0], ports[0]) as first,
        server_process(args, logs[1], ports[1]) as second,
    ):
        started = [(ports[0], first, logs[0]), (ports[1], second, logs[1])]
        await asyncio.gather(*(wait_until_serving(f"http://127.0.0.1:{p}", proc, log) for p, proc, log in started))
        yield started
        for _, proc, _ in started:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, _ in started:
            await asyncio.wait_for(proc.wait(), 45)


async def test_the_bench_tells_the_metrics_of_two_replicas_apart(
    replicas: list[tuple[int, asyncio.subprocess.Process, Path]],
) -> None:
    """Through a proxy the bench's two scrapes may reach different replicas: their deltas would mean nothing."""
    async with aiohttp.ClientSession() as session:

        async def page(port: int) -> str:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                return await response.text()

        first, second = [await page(port) for port, _, _ in replicas]
        assert "fer_instance{" in first
        assert same_processes(first, await page(replicas[0][0]))
        assert not same_processes(first, second)


async def test_nginx_spreads_clients_and_fails_over(
    tmp_path: Path, replicas: list[tuple[int, asyncio.subprocess.Process, Path]], face_jpeg: bytes
) -> None:
    direct = {p: f"http://127.0.0.1:{p}" for p, _, _ in replicas}
    async with balancer(tmp_path / "nginx", [p for p, _, _ in replicas]) as base, aiohttp.ClientSession() as session:
        sockets = [await served(session, base, face_jpeg) for _ in range(CLIENTS)]
        viewers = [await session.get(f"{base}/video/{VIDEO}") for _ in range(VIEWERS)]
        for viewer in viewers:
            await first_mjpeg_part(viewer)

        async def load(p: int) -> dict[str, Any]:
            health = await healthz(session, direct[p])
            assert health is not None
            return health

        before = {p: await load(p) for p in direct}
        assert sum(h["clients"] for h in before.values()) == CLIENTS
        assert sum(h["video_viewers"] for h in before.values()) == VIEWERS
        # least_conn: both replicas serve clients and viewers.
        assert all(h["clients"] > 0 and h["video_viewers"] > 0 for h in before.values()), before

        victim_port, victim, _ = replicas[0]
        survivor_port = replicas[1][0]
        on_victim = before[victim_port]["clients"]
        streams = [asyncio.create_task(read_until_end(v)) for v in viewers]

        killed_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)  # a crash: no goodbye from the replica

        async def closed(ws: aiohttp.ClientWebSocketResponse) -> bool:
            msg = await ws.receive()
            return msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR)

        # The victim's clients hear their socket close; the survivor's hear nothing (no frame sent).
        watches = [asyncio.create_task(closed(ws)) for ws in sockets]
        deadline = killed_at + FAILOVER_S
        while sum(w.done() for w in watches) < on_victim and time.monotonic() < deadline:
            await asyncio.wait(watches, timeout=deadline - time.monotonic(), return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0.2)  # room for a wrong extra closure to show up
        was_closed = [w.done() and w.result() for w in watches]
        for watch in watches:
            watch.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        assert sum(was_closed) == on_victim, (was_closed, before)
        closed_after_s = time.monotonic() - killed_at - 0.2
        print(f"\nthe killed replica's {on_victim} clients were closed {closed_after_s:.2f} s after the kill")
        # Reconnect like the page: after its first back-off, through nginx, to whoever is alive.
        await asyncio.sleep(RECONNECT_DELAY_S)
        for index, ws_closed in enumerate(was_closed):
            if ws_closed:
                await sockets[index].close()
                sockets[index] = await served(session, base, face_jpeg)
            else:
                await check_served(sockets[index], face_jpeg)  # the survivor's clients never noticed
        failover_s = time.monotonic() - killed_at
        assert failover_s < FAILOVER_S, f"failover took {failover_s:.1f} s"
        print(f"\n{on_victim} WebSocket clients of the killed replica served again {failover_s:.2f} s after the kill")

        # The dead replica's viewers see their stream end, reconnect and get parts again.
        await eventually(lambda: sum(t.done() for t in streams) >= 1, FAILOVER_S, "the victim's MJPEG stream ended")
        for viewer, task in zip(viewers, streams, strict=True):
            if task.done():
                viewer.close()
                async with session.get(f"{base}/video/{VIDEO}") as again:
                    await first_mjpeg_part(again)
                    after = await load(survivor_port)
                    assert after["video_viewers"] == VIEWERS

        after = await load(survivor_port)
        assert after["clients"] == CLIENTS, after
        for ws in sockets:
            await ws.close()
        for viewer, task in zip(viewers, streams, strict=True):
            viewer.close()
            task.cancel()


async def test_analysis_jobs_are_answered_by_either_replica(
    tmp_path: Path, replicas: list[tuple[int, asyncio.subprocess.Process, Path]]
) -> None:
    """Upload through the balancer, then poll and download on fresh connections: every request gets the job."""
    clip = face_clip(tmp_path / "face.mp4", frames=40)
    async with balancer(tmp_path / "nginx", [p for p, _, _ in replicas]) as base:
        async with aiohttp.ClientSession() as session:
            form = aiohttp.FormData()
            form.add_field("video", clip.read_bytes(), filename="face.mp4", content_type="video/mp4")
            async with session.post(f"{base}/api/analyses", data=form) as response:
                assert response.status == 202, await response.text()
                url = base + (await response.json())["url"]
        polls = downloads = 0
        rows: set[bytes] = set()
        deadline = time.monotonic() + 180
        while downloads < 8:
            assert time.monotonic() < deadline, (polls, downloads)
            # A new connection each time: nginx spreads them over the replicas (least_conn, all idle).
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
                async with fresh.get(url) as response:
                    assert response.status == 200, (polls, await response.text())
                    job = await response.json()
                polls += 1
                if job["state"] in ("queued", "running"):
                    await asyncio.sleep(0.1)
                    continue
                assert job["state"] == "done" and job["frames_done"] == 40, job
                async with fresh.get(base + job["csv_url"]) as response:
                    assert response.status == 200, await response.text()
                    rows.add(await response.read())
                downloads += 1
    assert len(rows) == 1 and next(iter(rows)).count(b"\n") == job["rows"] + 1
    # Both replicas answered for the job (their access logs), though only one of them ran it.
    job_path = f"GET /api/analyses/{job['id']}"
    answered = [log.read_text(errors="replace").count(job_path) for _, _, log in replicas]
    assert all(answered), answered


async def test_a_client_over_its_limits_gets_429_while_another_is_served(
    tmp_path: Path, replicas: list[tuple[int, asyncio.subprocess.Process, Path]], face_jpeg: bytes
) -> None:
    """deploy/nginx/fer_async.conf's per-address limits: 127.0.0.1 goes over them, 127.0.0.2 is still served."""
    async with balancer(tmp_path / "nginx", [p for p, _, _ in replicas]) as base:
        greedy = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.1", 0)))
        other = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))
        async with greedy, other:

            async def predict(session: aiohttp.ClientSession) -> tuple[int, dict[str, Any], str | None]:
                headers = {"Content-Type": "image/jpeg"}
                async with session.post(f"{base}/api/predict", data=face_jpeg, headers=headers) as response:
                    return response.status, json.loads(await response.read()), response.headers.get("Retry-After")

            # Photos: 40 at once, far over 2 at a time and a burst of 20.
            answers = await asyncio.gather(*(predict(greedy) for _ in range(40)))
            refused = [body for status, body, retry in answers if status == 429 and retry == "5"]
            assert len(refused) >= 20 and "too many requests" in refused[0]["error"], answers[:3]
            status, body, _ = await predict(other)
            assert status == 200 and body["faces"], body

            # Analyses: 2 a minute with a burst of 2, so the fourth start in a row is refused.
            async def start(session: aiohttp.ClientSession) -> int:
                async with session.post(f"{base}/api/analyses", json={"video": "no-such.mp4"}) as response:
                    return response.status

            assert [await start(greedy) for _ in range(4)] == [404, 404, 404, 429]  # 404: the replica answered
            assert await start(other) == 404

            # WebSockets: 4 at once per address.
            sockets = [await greedy.ws_connect(f"{base}/ws", origin=base) for _ in range(4)]
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused_socket:
                await greedy.ws_connect(f"{base}/ws", origin=base)
            assert refused_socket.value.status == 429
            ws = await other.ws_connect(f"{base}/ws", origin=base)
            assert (await ws.receive_json(timeout=30))["type"] == "hello"
            for open_socket in [*sockets, ws]:
                await open_socket.close()
