"""`--workers`: several server processes on one port, answering side by side, stopped together."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from analyze_clips import face_clip
from testsupport import eventually, serve_on_a_taken_port

from fer_async.bench.harness import free_port
from fer_async.bench.report import stage_profile
from fer_async.config import Settings, SettingsError, _cpu_cores
from fer_async.metrics import Metrics

from .procs import (
    REPO_ROOT,
    STOP_TIMEOUT_S,
    descendant_pids,
    healthz,
    running,
    server_process,
    tail,
    wait_until_serving,
)

# Fresh connections, each hashed by the kernel to one of the listening sockets: with two
# workers, the chance that 40 of them all land on one is 2 * 2**-40.
CONNECTIONS = 40


def test_workers_option() -> None:
    assert Settings.from_args([]).workers == 1
    assert Settings.from_args(["--workers", "3", "--port", "8080"]).workers == 3
    assert Settings.from_args(["--workers", "auto"]).workers == _cpu_cores() >= 1
    assert Settings.from_args([], env={"FER_WORKERS": "2"}).workers == 2
    with pytest.raises(SettingsError, match="fixed --port"):
        Settings(workers=2, port=0)
    with pytest.raises(SettingsError, match="--workers"):
        Settings(workers=0)


def test_metrics_of_all_workers_in_one_scrape(tmp_path: Path) -> None:
    first, second = Metrics(worker="0", shared_dir=tmp_path), Metrics(worker="1", shared_dir=tmp_path)
    first.frame_done("ws", 1)
    second.frame_done("ws", 2)
    second.frame_done("api", 0)
    second.observe_batch(4, 0.01, 0.02)
    second.publish(second.own_families())
    text = first.render().decode()
    assert 'fer_frames_total{source="ws",worker="0"} 1.0' in text
    assert 'fer_frames_total{source="ws",worker="1"} 1.0' in text
    assert 'fer_faces_total{source="ws",worker="1"} 2.0' in text
    assert 'fer_batch_size_count{worker="1"} 1.0' in text
    assert 'fer_batch_size_count{worker="0"} 0.0' in text
    assert text.count("# TYPE fer_frames_total counter") == 1  # one family, both workers' series


def test_bench_profile_sums_the_workers(tmp_path: Path) -> None:
    pages = []
    for frames in (0, 10):
        workers = [Metrics(worker=str(i), shared_dir=tmp_path) for i in (0, 1)]
        for metrics in workers:
            for _ in range(frames // 2):
                metrics.frame_done("ws", 1)
                metrics.observe_stage("detect", 0.01)
        workers[1].publish(workers[1].own_families())
        pages.append(workers[0].render().decode())
    profile = stage_profile(pages[0], pages[1], wall_s=1.0)
    assert profile is not None
    assert profile["detect"] == 10.0  # 10 frames, 0.1 s of detection in all: 10 ms per frame
    assert 0.0 <= profile["loop_idle_pct"] <= 100.0


async def test_two_workers_share_the_port_and_stop_together(tmp_path: Path, face_jpeg: bytes) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    async with server_process(["--workers", "2", "--max-clients", "8"], log, port) as proc:
        await wait_until_serving(base, proc, log)
        pids: dict[int, int] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        # The second worker may still be loading its model when the first answers.
        while len(pids) < 2 and loop.time() < deadline:
            connector = aiohttp.TCPConnector(force_close=True)  # a new connection per request
            async with aiohttp.ClientSession(connector=connector) as session:
                for _ in range(CONNECTIONS):
                    health = await healthz(session, base)
                    if health is not None:
                        worker = health["worker"]
                        assert worker["count"] == 2
                        pids[worker["index"]] = worker["pid"]
            await asyncio.sleep(0.5)
        assert sorted(pids) == [0, 1], f"only workers {sorted(pids)} answered:\n{tail(log)}"
        assert set(pids.values()) <= descendant_pids(proc.pid)

        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{base}/ws", origin=base)
            assert (await ws.receive_json(timeout=30))["type"] == "hello"
            await ws.send_bytes(face_jpeg)
            reply = await ws.receive_json(timeout=60)
            assert reply["type"] == "result" and reply["faces"]

            async def scrape() -> str:
                async with session.get(f"{base}/metrics") as resp:
                    return await resp.text()

            # Whichever worker answers, it reports both (the other one's numbers at most 1 s old).
            text = ""
            for _ in range(100):
                text = await scrape()
                if 'worker="0"' in text and 'worker="1"' in text and 'fer_frames_total{source="ws"' in text:
                    break
                await asyncio.sleep(0.1)
            assert 'fer_connected_clients{worker="0"}' in text and 'fer_connected_clients{worker="1"}' in text

            # A worker that dies is replaced; the other one keeps serving meanwhile.
            os.kill(pids[0], signal.SIGKILL)
            replaced: dict[int, int] = {}

            async def worker_0_replaced() -> bool:
                connector = aiohttp.TCPConnector(force_close=True)
                async with aiohttp.ClientSession(connector=connector) as fresh:
                    for _ in range(CONNECTIONS // 4):
                        health = await healthz(fresh, base)
                        if health is not None and health["worker"]["index"] == 0:
                            replaced[0] = health["worker"]["pid"]
                            return replaced[0] != pids[0]
                return False

            loop_deadline = loop.time() + 180
            while not await worker_0_replaced():
                assert loop.time() < loop_deadline, f"worker 0 was not replaced:\n{tail(log)}"
                await asyncio.sleep(0.5)
            await ws.close()

        family = descendant_pids(proc.pid)
        assert replaced[0] in family and pids[1] in family
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        text = tail(log, 100_000)
        assert code == 0, text[-3000:]
        await eventually(lambda: not any(running(pid) for pid in family), 10, "every worker process gone")
        assert "Traceback" not in text, text[-3000:]
        assert text.count("fer_async: stopped") == 2, text[-3000:]
        assert "all workers stopped" in text


async def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves the supervisor no chance to stop its workers: they notice and stop themselves."""
    port = free_port()
    log = tmp_path / "server.log"
    async with server_process(["--workers", "2"], log, port) as proc:
        await eventually(
            lambda: tail(log, 100_000).count("listening (pid") == 2 or proc.returncode is not None,
            240,
            "both workers listening",
        )
        workers = descendant_pids(proc.pid)
        assert len(workers) >= 2, tail(log)
        proc.kill()
        await proc.wait()
        await eventually(lambda: not any(running(pid) for pid in workers), STOP_TIMEOUT_S, "orphaned workers gone")
        text = tail(log, 100_000)
        assert text.count("the supervisor is gone: stopping") == 2, text[-3000:]
        assert text.count("fer_async: stopped") == 2, text[-3000:]


async def test_port_in_use_stops_the_workers_before_they_load_a_model() -> None:
    port, code, text = await serve_on_a_taken_port(["--workers", "2"], 60, {**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert code == 1, text
    assert f"cannot listen on 127.0.0.1:{port}" in text and "in use" in text, text
    assert "worker 0 started" not in text, text  # refused by the supervisor, before any worker


async def test_a_second_server_with_workers_on_the_same_port_is_refused(tmp_path: Path) -> None:
    """SO_REUSEPORT lets any process of the same user listen beside another: the check must not."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "first.log"
    async with server_process(["--workers", "2"], log, port) as first:
        await wait_until_serving(base, first, log)
        second_log = tmp_path / "second.log"
        async with server_process(["--workers", "2"], second_log, port) as second:
            code = await asyncio.wait_for(second.wait(), STOP_TIMEOUT_S)
        text = tail(second_log)
        assert code == 1, text
        assert f"cannot listen on 127.0.0.1:{port}" in text and "in use" in text, text
        assert "worker 0 started" not in text, text
        assert first.returncode is None


async def test_every_worker_answers_for_every_analysis_job(tmp_path: Path) -> None:
    """`--workers 2`, default results directory: polls, downloads and a stop reach a job from either worker."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    temporary = tmp_path / "tmp"  # where the server makes its directories: empty again once it has stopped
    temporary.mkdir()
    clips = [face_clip(tmp_path / "short.mp4", frames=30), face_clip(tmp_path / "long.mp4", frames=600)]
    async with server_process(["--workers", "2"], log, port, env={"TMPDIR": str(temporary)}) as proc:
        await wait_until_serving(base, proc, log)
        await eventually(lambda: tail(log, 100_000).count("listening (pid") == 2, 120, "both workers listening")

        async def fresh(method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
            """One request on a new connection, which the kernel hands to either worker."""
            connector = aiohttp.TCPConnector(force_close=True)
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.request(method, base + path, **kwargs) as response,
            ):
                return response.status, await response.read()

        async def upload(clip: Path) -> str:
            form = aiohttp.FormData()
            form.add_field("video", await asyncio.to_thread(clip.read_bytes), filename=clip.name)
            status, body = await fresh("POST", "/api/analyses", data=form)
            assert status == 202, body
            return str(json.loads(body)["url"])

        async def follow(url: str, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
            for _ in range(3000):
                status, body = await fresh("GET", url)
                assert status == 200, body  # every poll finds the job, whichever worker answers
                job: dict[str, Any] = json.loads(body)
                if until(job):
                    return job
                await asyncio.sleep(0.05)
            pytest.fail(f"{url} never got there: {job}")

        short = await upload(clips[0])
        job = await follow(short, lambda job: job["state"] not in ("queued", "running"))
        assert job["state"] == "done" and job["frames_done"] == 30, job
        downloads = {await fresh("GET", job["csv_url"]) for _ in range(CONNECTIONS // 2)}
        assert len(downloads) == 1 and next(iter(downloads))[0] == 200
        text = tail(log, 1_000_000)
        for worker in ("w0", "w1"):  # both workers' access logs have the job's requests
            assert f" {worker} aiohttp.access: " in text and any(
                f" {worker} aiohttp.access: " in line and job["csv_url"] in line for line in text.splitlines()
            ), worker

        # A stop request lands on whichever worker; the one running the job stops it.
        long = await upload(clips[1])
        await follow(long, lambda job: job["frames_done"] >= 4)
        for _ in range(4):  # several requests: some land on the worker that does not run it
            status, body = await fresh("DELETE", long)
            assert status == 200, body
        job = await follow(long, lambda job: job["state"] not in ("queued", "running"))
        assert job["state"] == "stopped" and job["frames_done"] < 600, job

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S) == 0, tail(log)
    # Results and uploads removed with the server (onnxruntime leaves its own 51-byte .ses file there).
    assert [p.name for p in temporary.iterdir() if p.name != ".ses"] == []
