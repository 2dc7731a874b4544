"""`--workers N`: N server processes on one port, each with its own executor and model.

Each worker is a full `python -m fer_async` server (its own event loop, batcher, model thread)
that binds the same host:port with `SO_REUSEPORT` (aiohttp's `run_app(reuse_port=True)`); the
Linux kernel then hashes every new connection to one of the listening sockets. Why this and not
one inherited socket or gunicorn (README, "Scaling"):

* one socket shared by N processes leaves the choice to whichever process wakes first; under
  light load one worker accepts most connections, and a WebSocket keeps costing its worker CPU
  for its whole life, so an uneven accept stays uneven. Reuseport spreads them evenly;
* gunicorn's aiohttp worker would add a dependency and a second configuration path (its own
  options, signals and logging) for what is, here, a loop of a few processes.

This module is the supervisor (the parent process, which loads neither TensorFlow nor OpenCV)
and each worker's entry point (which tells the supervisor when it listens); what a worker adds
to its app (publishing its metrics for its siblings, stopping when the supervisor disappears,
even after a SIGKILL of the parent) is in `fer_async.server.worker`. The supervisor checks once
that nothing listens on the port (another server with `--workers` included), forwards
SIGINT/SIGTERM to all workers, waits for their clean shutdown, restarts a worker that dies
after it had started, and stops everything (exit 1) when a worker cannot start (bad weights, a
port taken meanwhile).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fer_async.config import Settings
from fer_async.scratch import remove_scratch, scratch_dir

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess


logger = logging.getLogger(__name__)

# A worker's own shutdown is bounded by run_app's shutdown timeout (10 s) plus closing sockets
# (5 s); past this the supervisor kills it.
STOP_TIMEOUT_S = 30.0
_READY = "ready"


# --- in the worker -------------------------------------------------------------------------


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def _worker_main(settings: Settings, index: int, ready: Connection, shared_dir: Path) -> None:
    """Entry point of a worker process (spawned: a fresh interpreter, no state from the parent)."""
    # Until run_app installs its own handlers, a stop request simply ends the process (exit 0):
    # there is nothing to clean up yet. SIGINT too: Ctrl-C reaches the whole process group.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_on_signal)
    from fer_async.server.worker import WorkerInfo
    from fer_async.serving import configure_logging, serve

    configure_logging(settings, tag=f"w{index}")
    info = WorkerInfo(index=index, count=settings.workers, pid=os.getpid(), shared_dir=shared_dir)
    sys.exit(serve(settings, worker=info, on_listening=lambda: ready.send(_READY)))


# --- in the supervisor ---------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    ready: Connection
    started: bool = False


class _Supervisor:
    def __init__(self, settings: Settings, shared_dir: Path) -> None:
        self.settings = settings
        self.shared_dir = shared_dir
        self.context = multiprocessing.get_context("spawn")  # TensorFlow is not fork-safe
        self.workers: dict[int, _Worker] = {}
        self.exit_code = 0

    def start(self, index: int) -> None:
        reader, writer = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_worker_main,
            args=(self.settings, index, writer, self.shared_dir),
            name=f"fer-worker-{index}",
        )
        process.start()
        writer.close()  # the worker holds the only writer: EOF once it is gone
        self.workers[index] = _Worker(index, process, reader)
        logger.info("worker %d started (pid %s)", index, process.pid)

    def run(self, wake: int) -> None:
        """Watch the workers until a stop is requested (a byte on `wake`) or one cannot start."""
        while True:
            waiting: dict[Any, tuple[str, _Worker | None]] = {wake: ("wake", None)}
            for worker in self.workers.values():
                waiting[worker.process.sentinel] = ("exit", worker)
                if not worker.started and not worker.ready.closed:
                    waiting[worker.ready] = ("ready", worker)
            for handle in wait(list(waiting)):
                what, owner = waiting[handle]
                if what == "wake" or owner is None:
                    return
                worker = owner
                if what == "ready":
                    try:
                        message = worker.ready.recv()
                    except (EOFError, OSError):  # it exited: its sentinel says so (now or in a moment)
                        worker.ready.close()
                        continue
                    if message == _READY:
                        worker.started = True
                        logger.info("worker %d listening (pid %s)", worker.index, worker.process.pid)
                    continue
                worker.process.join()
                code = worker.process.exitcode
                worker.ready.close()
                if not worker.started:
                    logger.error("worker %d exited with code %s before it could serve: stopping", worker.index, code)
                    self.exit_code = 1
                    del self.workers[worker.index]
                    return
                logger.warning(
                    "worker %d (pid %s) died with code %s: restarting it", worker.index, worker.process.pid, code
                )
                self.start(worker.index)

    def stop(self) -> None:
        alive = [w for w in self.workers.values() if w.process.exitcode is None]
        for worker in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid or 0, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for worker in alive:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                # One still loading its model (a thread that cannot be interrupted) had no clients.
                level = logging.ERROR if worker.started else logging.INFO
                logger.log(level, "worker %d did not stop in %.0f s: killing it", worker.index, STOP_TIMEOUT_S)
                worker.process.kill()
                worker.process.join()
                if worker.started:
                    self.exit_code = 1
            elif worker.process.exitcode != 0:
                logger.error("worker %d exited with code %s", worker.index, worker.process.exitcode)
                self.exit_code = 1
            worker.ready.close()


def supervise(settings: Settings) -> int:
    """Run `settings.workers` server processes on one port until SIGINT/SIGTERM; the exit status."""
    if not hasattr(socket, "SO_REUSEPORT"):
        logger.error("--workers > 1 needs SO_REUSEPORT, which this platform lacks: run one process per port")
        return 2
    if not sys.platform.startswith("linux"):
        logger.warning("SO_REUSEPORT spreads connections evenly only on Linux: workers may be unevenly loaded")
    from fer_async.serving import port_problem

    # Without SO_REUSEPORT: with it the bind succeeds beside any listener of the same user (another
    # server with --workers), and both would answer on the port. None of our workers listens yet,
    # and the probe is closed before they start, so it takes nothing from them.
    problem = port_problem(settings.host, settings.port)
    if problem is not None:  # before N processes load N models
        logger.error("cannot start: %s", problem)
        return 1
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)

    def request_stop(signum: int, _frame: Any) -> None:
        logger.info("stopping %d workers (signal %s)", settings.workers, signal.Signals(signum).name)
        with contextlib.suppress(BlockingIOError):
            os.write(wake_write, b"x")

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    shared_dir = scratch_dir("fer-workers-")
    if settings.results_dir is None:  # one directory of analysis results that every worker reads
        settings = settings.replace(results_dir=shared_dir / "analyses")
    supervisor = _Supervisor(settings, shared_dir)
    logger.info("starting %d workers on %s (SO_REUSEPORT)", settings.workers, settings.url)
    try:
        for index in range(settings.workers):
            supervisor.start(index)
        supervisor.run(wake_read)
    finally:
        # Further signals (a second Ctrl-C) must not interrupt the stop half-way.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake_read)
        os.close(wake_write)
        remove_scratch(shared_dir)
    logger.info("all workers stopped")
    return supervisor.exit_code
