"""What can become of a frame, decided once for every endpoint (WebSocket, /api/predict, MJPEG).

`submit` sends a frame through the shared pipeline and turns every way it can fail into a
`Refused` with a `Reason` (the metric label of `fer_frame_errors_total`) and the message the
client may see; `refuse` does the same for frames an endpoint turns away before submitting.
Each endpoint only maps a `Refused` onto its own transport (a JSON error, an HTTP status, a
frame shown without boxes); `Refused.retry_after_s` says which refusals pass, and when to try again.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from fer_async.batcher import BatcherClosed, BatcherOverloaded
from fer_async.imaging import ImageError, ImageTooLarge, check_image_header
from fer_async.labels import FrameResult
from fer_async.metrics import Metrics
from fer_async.pipeline import FramePipeline
from fer_async.predictor import ExecutorUnavailable
from fer_async.recognition import Frame
from fer_async.schedule import PHOTO, FramePlan

T = TypeVar("T")


class Reason(enum.StrEnum):
    """Why a frame or message got no result: the `reason` label of fer_frame_errors_total."""

    TOO_LARGE = "too_large"  # over --max-frame-bytes, or more pixels than --max-pixels lets us decode
    BAD_IMAGE = "bad_image"  # not a JPEG/PNG, truncated, too many scans
    BUSY = "busy"  # the batcher's queue is full
    SHUTDOWN = "shutdown"  # the server is stopping
    ANALYSIS_FAILED = "analysis_failed"  # the detector or model failed on the frame's batch
    EXECUTOR_DOWN = "executor_unavailable"  # the --executor inference server cannot be reached or timed out
    BAD_MESSAGE = "bad_message"  # a WebSocket text message that is not a valid control message
    PROTOCOL = "protocol"  # a WebSocket protocol error (aiohttp closes the socket)


# Refusals that pass: the same frame sent again later may well get a result. "busy" passes
# when the queue drains, an executor outage when the readiness probe (every
# remote.RETRY_INTERVAL_S while down) finds the inference server back.
RETRY_AFTER_S = {Reason.BUSY: 1, Reason.EXECUTOR_DOWN: 1}


@dataclass(frozen=True)
class Refused:
    """A frame that got no result: why, and a message that is safe to show the client."""

    reason: Reason
    message: str

    @property
    def retry_after_s(self) -> int | None:
        """Seconds after which the same frame may succeed (HTTP Retry-After); None: it will not."""
        return RETRY_AFTER_S.get(self.reason)


BUSY_MESSAGE = "server busy"
SHUTDOWN_MESSAGE = "server shutting down"
FAILED_MESSAGE = "analysis failed"
# The inference server's address and error stay in the log and /healthz, not in client replies.
EXECUTOR_DOWN_MESSAGE = "inference server unavailable"


def refuse(metrics: Metrics, reason: Reason, message: str) -> Refused:
    """Count a refusal and return it."""
    metrics.frame_errors.labels(reason.value).inc()
    return Refused(reason, message)


def check_frame(
    metrics: Metrics, data: bytes, max_frame_bytes: int, max_pixels: int, *, option: str = "--max-frame-bytes"
) -> Refused | None:
    """The cheap checks (size, image header) made before a frame may take a batch slot."""
    if len(data) > max_frame_bytes:
        return refuse(
            metrics, Reason.TOO_LARGE, f"frame is {len(data)} bytes; the limit is {max_frame_bytes} ({option})"
        )
    try:
        check_image_header(data, max_pixels)
    except ImageTooLarge as exc:
        return refuse(metrics, Reason.TOO_LARGE, str(exc))
    except ImageError as exc:
        return refuse(metrics, Reason.BAD_IMAGE, str(exc))
    return None


async def submit(
    pipeline: FramePipeline,
    metrics: Metrics,
    source: str,
    frame: Frame,
    plan: FramePlan = PHOTO,
) -> FrameResult | Refused:
    """The frame's result through the shared pipeline (prepare, then the batcher), or why there is none."""
    result = await attempt(metrics, pipeline.submit(frame, plan))
    if isinstance(result, FrameResult):
        metrics.frame_done(source, len(result.faces))
    return result


async def attempt(metrics: Metrics, work: Awaitable[T]) -> T | Refused:
    """What `work` (a pipeline stage, or both) returns, or the Refused its failure means, counted."""
    try:
        return await work
    except ImageTooLarge as exc:
        return refuse(metrics, Reason.TOO_LARGE, str(exc))
    except ImageError as exc:
        return refuse(metrics, Reason.BAD_IMAGE, str(exc))
    except BatcherOverloaded:
        return refuse(metrics, Reason.BUSY, BUSY_MESSAGE)
    except BatcherClosed:
        return refuse(metrics, Reason.SHUTDOWN, SHUTDOWN_MESSAGE)
    except ExecutorUnavailable:
        return refuse(metrics, Reason.EXECUTOR_DOWN, EXECUTOR_DOWN_MESSAGE)
    except Exception:
        # The batch handler has logged the traceback once for the whole batch.
        return refuse(metrics, Reason.ANALYSIS_FAILED, FAILED_MESSAGE)


def server_timings(result: FrameResult, received: float) -> dict[str, float]:
    """The analyzer's per-stage timings plus the server-side queue and total, in ms.

    `received` is the `time.perf_counter()` at which the server had the whole frame.
    """
    timings = result.timings
    total = (time.perf_counter() - received) * 1000.0
    detect = timings.get("detect", 0.0) + timings.get("crop", 0.0)  # clients see cropping as part of detection
    analysed = timings.get("total", timings.get("decode", 0.0) + detect + timings.get("model", 0.0))
    return {
        "decode": round(timings.get("decode", 0.0), 2),
        "detect": round(detect, 2),
        "model": round(timings.get("model", 0.0), 2),
        "queue": round(max(0.0, total - analysed), 2),
        "total": round(total, 2),
    }
