"""The remote executor: faces classified by an inference server over the Open Inference Protocol.

The Open Inference Protocol ("KServe v2", here its HTTP/JSON form) is what Triton Inference
Server, KServe and Seldon MLServer speak: a pool of GPU servers behind one URL serves many
front-end replicas and batches across all of them. `deploy/triton/` and `deploy/mlserver/` hold
the model repository for either server.

`RemotePredictor.predict(faces[N, 48, 48]) -> probs[N, 7]` has the in-process model's shape, so
the analyzer, the batcher and the web layer do not know which executor they use. The analyzer
calls `predict` synchronously from its model thread; the HTTP work runs on the server's event
loop (one pooled aiohttp session) and the thread waits for it with a deadline. The analyzer
stays synchronous on purpose: it is one code path for the in-process and the remote executor
(and for tools that use it without a server), and the model thread would wait for the
network exactly where it otherwise computes, so making it async would buy nothing while the
batcher runs one batch at a time.

Faults are bounded and visible: every batch has a deadline (`timeout_s`); a failed batch marks
the executor degraded (with the reason, shown by `/healthz`) and later batches fail at once
instead of each waiting for a dead server; a probe polls the server's readiness and brings the
executor back as soon as the model answers again.

The request and response bodies are `fer_async.oip`'s; the check of the faces and flip TTA are
`fer_async.predictor`'s, shared with the in-process model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import numpy as np

from fer_async.labels import EMOTIONS
from fer_async.oip import ExecutorMisconfigured, ModelSignature, decode_response, encode_request, parse_metadata
from fer_async.predictor import ExecutorUnavailable, served, validate_faces
from fer_async.schedule import View

logger = logging.getLogger(__name__)

# Rows (faces, mirrored ones included) in one HTTP request. Equal to max_batch_size in
# deploy/triton/fernet/config.pbtxt: Triton refuses a request larger than the model's
# max batch, so a bigger analyzer batch is split and its requests sent side by side.
MAX_ROWS_PER_REQUEST = 64
# Requests of one predictor on the wire at once; more wait (within their batch's deadline).
MAX_IN_FLIGHT = 4
# How often the readiness probe polls while healthy (so /healthz notices an outage without
# traffic) and while degraded (how soon service resumes after the server is back).
PROBE_INTERVAL_S = 2.0
RETRY_INTERVAL_S = 0.5
# The model thread waits this much longer than the batch deadline before giving up on the
# loop itself (a loop that is shutting down or blocked); the deadline proper is enforced there.
THREAD_WAIT_MARGIN_S = 1.0
_ERROR_BODY_LIMIT = 300
# An infer reply's bytes: the JSON around the values, and each value's text with its comma
# (MLServer writes float32 as up to 24 characters).
_RESPONSE_BASE_BYTES = 64 * 1024
_RESPONSE_BYTES_PER_VALUE = 32
_METADATA_LIMIT = 1024 * 1024


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within the deadline"
    return str(exc) or type(exc).__name__


@dataclass
class RemoteStats:
    """Where a remote batch's time goes, summed over requests (read by the measurements)."""

    requests: int = 0
    rows: int = 0
    encode_s: float = 0.0  # building the JSON body
    wire_s: float = 0.0  # from sending the request to having the whole response (server included)
    decode_s: float = 0.0  # parsing the JSON response


class RemotePredictor:
    """Classifies faces on an Open Inference Protocol server; `start()` on the loop, then `predict`."""

    def __init__(
        self,
        url: str,
        model_name: str,
        *,
        flip_tta: bool = True,
        timeout_s: float = 5.0,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_rows_per_request: int = MAX_ROWS_PER_REQUEST,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the executor URL must be http(s)://host[:port][/prefix], got {url!r}")
        if timeout_s <= 0 or max_in_flight < 1 or max_rows_per_request < 1:
            raise ValueError("timeout_s > 0, max_in_flight >= 1 and max_rows_per_request >= 1 are required")
        self.base_url = url.rstrip("/")
        self.model_name = model_name
        self.flip_tta = flip_tta
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.max_rows_per_request = max_rows_per_request
        self.device = f"remote {parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
        self.stats = RemoteStats()
        self.signature: ModelSignature | None = None
        self._model_url = f"{self.base_url}/v2/models/{quote(model_name, safe='')}"
        self._problem: str | None = "not started"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(max_in_flight)
        self._wake_probe = asyncio.Event()
        self._probe_task: asyncio.Task[None] | None = None
        self._predictor = served(self._infer_from_thread, flip_tta=flip_tta)

    @property
    def problem(self) -> str | None:
        """None while the server serves the model, else why it does not (for /healthz)."""
        return self._problem

    async def start(self) -> None:
        """Open the session and check the model; an unreachable server only makes us degraded."""
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_in_flight + 1),  # +1: the probe never waits
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
        )
        try:
            await self._check()
        except ExecutorMisconfigured:
            await self.aclose()
            raise
        except (ExecutorUnavailable, aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._set_problem(f"{self.base_url}: {_describe(exc)}")
        else:
            self._set_problem(None)
        self._probe_task = asyncio.create_task(self._probe_loop(), name="fer-remote-probe")

    async def aclose(self) -> None:
        self._problem = "closed"
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """Probabilities [N, 7] for uint8 faces [N, 48, 48]; call from a thread, not the loop.

        With `flip_tta` each face and its mirror image travel in the same requests, as they go
        through the in-process network in one call, so both executors give the same probabilities.
        """
        return self._predictor.predict(faces)

    def predict_views(self, faces: np.ndarray, views: Sequence[View]) -> np.ndarray:
        """As `predict`, each face in its own view (fer_async.schedule.View) where flip TTA is on."""
        return self._predictor.predict_views(faces, views)

    def _infer_from_thread(self, faces: np.ndarray) -> np.ndarray:
        """`infer_async` on the server's loop, waited for by the calling (model) thread."""
        loop = self._loop
        if loop is None:
            raise ExecutorUnavailable("the remote executor was not started")
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            raise RuntimeError("predict() would block the event loop: await infer_async() there")
        future = asyncio.run_coroutine_threadsafe(self.infer_async(faces), loop)
        try:
            return future.result(timeout=self.timeout_s + THREAD_WAIT_MARGIN_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ExecutorUnavailable("the event loop did not finish the request in time") from None
        except concurrent.futures.CancelledError:
            raise ExecutorUnavailable("the request was cancelled (shutting down)") from None

    async def infer_async(self, faces: np.ndarray) -> np.ndarray:
        """The served network's probabilities for `faces` as given (no flip TTA), on the loop."""
        faces = validate_faces(faces)
        signature, problem = self.signature, self._problem
        if problem is not None or signature is None:
            # Fail at once while the server is known to be down: waiting for a dead server
            # would only hold every batch for the whole deadline. The probe brings us back.
            raise ExecutorUnavailable(f"inference server unavailable: {problem}")
        step = self.max_rows_per_request
        try:
            async with asyncio.timeout(self.timeout_s):
                parts = await _all([self._request(signature, faces[i : i + step]) for i in range(0, len(faces), step)])
        except (ExecutorUnavailable, aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason = f"{self.base_url}: {_describe(exc)}"
            self._set_problem(reason)
            raise ExecutorUnavailable(f"inference server failed: {reason}") from exc
        return np.concatenate(parts)

    async def _request(self, signature: ModelSignature, rows: np.ndarray) -> np.ndarray:
        assert self._session is not None
        async with self._slots:
            started = time.perf_counter()
            body = encode_request(signature, rows)
            sent = time.perf_counter()
            try:
                raw = await self._post(body, len(rows))
            except aiohttp.ServerDisconnectedError:
                # A pooled keep-alive connection the server closed (it restarted, or an idle
                # timeout): inference has no side effects, so one retry on a fresh connection.
                raw = await self._post(body, len(rows))
            received = time.perf_counter()
            try:
                body = json.loads(raw)
            except ValueError:
                raise ExecutorUnavailable(f"the response of {self._model_url}/infer is not JSON") from None
            probs = decode_response(signature, body, len(rows))
            stats = self.stats
            stats.requests += 1
            stats.rows += len(rows)
            stats.encode_s += sent - started
            stats.wire_s += received - sent
            stats.decode_s += time.perf_counter() - received
            return probs

    async def _post(self, body: bytes, rows: int) -> bytes:
        assert self._session is not None
        headers = {"Content-Type": "application/json"}
        async with self._session.post(f"{self._model_url}/infer", data=body, headers=headers) as response:
            if response.status != 200:
                text = (await response.content.read(_ERROR_BODY_LIMIT)).decode(errors="replace")
                raise ExecutorUnavailable(f"HTTP {response.status} from {self._model_url}/infer: {text}")
            # A reply is read only as far as `rows` faces' probabilities can take: an 80 MB one
            # was parsed whole, and the server kept its 1.2 GB.
            limit = _RESPONSE_BASE_BYTES + rows * len(EMOTIONS) * _RESPONSE_BYTES_PER_VALUE
            return await _read_at_most(response, limit, f"the response of {self._model_url}/infer")

    async def _check(self) -> None:
        """Raise unless the model is ready; (re)read its signature after start or an outage."""
        assert self._session is not None
        async with self._session.get(f"{self._model_url}/ready") as response:
            if response.status != 200:
                raise ExecutorUnavailable(f"model {self.model_name!r} not ready (HTTP {response.status})")
        if self.signature is None or self._problem is not None:
            async with self._session.get(self._model_url) as response:
                if response.status != 200:
                    raise ExecutorUnavailable(f"no metadata for model {self.model_name!r} (HTTP {response.status})")
                raw = await _read_at_most(response, _METADATA_LIMIT, f"the metadata of model {self.model_name!r}")
                try:
                    metadata = json.loads(raw)
                except ValueError:  # an outage's HTML page, or a cut-off reply: wait for the real one
                    raise ExecutorUnavailable(f"the metadata of model {self.model_name!r} is not JSON") from None
            self.signature = parse_metadata(metadata)

    async def _probe_loop(self) -> None:
        while True:
            interval = RETRY_INTERVAL_S if self._problem is not None else PROBE_INTERVAL_S
            try:
                async with asyncio.timeout(interval):
                    await self._wake_probe.wait()
            except TimeoutError:
                pass
            self._wake_probe.clear()
            try:
                await self._check()
            except (ExecutorUnavailable, aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._set_problem(f"{self.base_url}: {_describe(exc)}")
            except Exception as exc:  # the probe is the way back from an outage: it must not end
                logger.exception("remote executor probe failed")
                self._set_problem(f"{self.base_url}: probe failed: {_describe(exc)}")
            else:
                self._set_problem(None)

    def _set_problem(self, problem: str | None) -> None:
        if problem == self._problem:
            return
        if problem is None:
            logger.info("remote executor ready: model %r on %s (%s)", self.model_name, self.base_url, self.signature)
        elif self._problem is None or self._problem == "not started":
            logger.warning("remote executor degraded: %s", problem)
            self._wake_probe.set()
        self._problem = problem


async def _read_at_most(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole body, or ExecutorUnavailable once it passes `limit` bytes."""
    data = bytearray()
    while chunk := await response.content.read(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise ExecutorUnavailable(f"{what} is over {limit} bytes")
    return bytes(data)


async def _all(coroutines: list[Any]) -> list[np.ndarray]:
    """Await all; on the first failure cancel the others and raise that failure itself."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # retrieve every outcome: no stray warnings
