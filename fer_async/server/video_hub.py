"""The `VideoHub`: one decoder, one analysis and one encoder per watched (file, loop).

It runs one producer per (file, loop) while anyone watches it: a reader task decodes the file
at its own frame rate into a one-slot mailbox, and the producer takes the newest frame, sends
it through the same batcher as the webcam frames (with the hints of the channel's own
`DetectionSchedule`), draws the faces and encodes a JPEG (in an executor thread, never on the
event loop), then offers the JPEG to every viewer's own one-slot mailbox. So analysis that is
slower than the video skips frames instead of slowing the video, and a slow viewer loses frames
without holding up the producer or the other viewers. The producer stops when its last viewer
leaves. `fer_async.server.mjpeg` serves the JPEGs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_async.imaging import draw_annotations, encode_jpeg
from fer_async.labels import Face
from fer_async.mailbox import LatestMailbox, MailboxClosed
from fer_async.metrics import Metrics
from fer_async.pipeline import FramePipeline
from fer_async.schedule import DEFAULT_CADENCE, Cadence, DetectionSchedule
from fer_async.server.outcomes import Reason, Refused, submit
from fer_async.tracker import TrackedFace, Tracker
from fer_async.video import VIDEO_MAX_WIDTH, VideoError, VideoReader

logger = logging.getLogger(__name__)

JPEG_QUALITY = 80


class HubClosed(RuntimeError):
    """The hub is shutting down and takes no new viewers."""


def _annotate(frame: np.ndarray, faces: tuple[TrackedFace, ...]) -> bytes:
    draw_annotations(frame, faces)  # in place: the frame is ours alone once it was analysed
    return encode_jpeg(frame, JPEG_QUALITY)


@dataclass(eq=False)
class _Channel:
    path: Path
    loop: bool
    viewers: set[LatestMailbox[bytes]] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class VideoHub:
    """Shares one decoder, one analysis and one encoder per (file, loop) among its viewers."""

    def __init__(
        self,
        batcher: FramePipeline,
        metrics: Metrics,
        executor: Executor,
        *,
        tracker_factory: Callable[[], Tracker],  # tracker.tracker_for with the server's settings
        cadence: Cadence = DEFAULT_CADENCE,  # the server's --detect-every and --alternate-flip
    ) -> None:
        self._batcher = batcher
        self._tracker_factory = tracker_factory
        self._cadence = cadence
        self._metrics = metrics
        self._executor = executor
        self._channels: dict[tuple[Path, bool], _Channel] = {}
        self._closed = False

    @property
    def producers(self) -> int:
        """Producers running now (one per watched file and loop mode)."""
        return sum(1 for c in self._channels.values() if c.task is not None and not c.task.done())

    @property
    def viewers(self) -> int:
        return sum(len(c.viewers) for c in self._channels.values())

    @contextlib.asynccontextmanager
    async def subscribe(self, path: Path, *, loop: bool = True) -> AsyncIterator[LatestMailbox[bytes]]:
        """A mailbox that receives the annotated JPEGs of `path`, closed when the stream ends."""
        if self._closed:
            raise HubClosed("the server is shutting down")
        key = (path, loop)
        channel = self._channels.get(key)
        if channel is None:
            channel = _Channel(path, loop)
            channel.task = asyncio.create_task(self._produce(channel), name=f"video {path.name}")
            self._channels[key] = channel
        mailbox: LatestMailbox[bytes] = LatestMailbox()
        channel.viewers.add(mailbox)
        try:
            yield mailbox
        finally:
            channel.viewers.discard(mailbox)
            mailbox.close()
            if not channel.viewers and self._channels.get(key) is channel:
                del self._channels[key]
                await self._stop(channel)

    async def aclose(self) -> None:
        """Stop every producer and end every viewer's stream. Idempotent."""
        self._closed = True
        channels = list(self._channels.values())
        self._channels.clear()
        for channel in channels:
            await self._stop(channel)

    @staticmethod
    async def _stop(channel: _Channel) -> None:
        if channel.task is not None:
            channel.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await channel.task

    async def _produce(self, channel: _Channel) -> None:
        latest: LatestMailbox[tuple[np.ndarray, float]] = LatestMailbox()
        reader = asyncio.create_task(self._read(channel, latest), name=f"video reader {channel.path.name}")
        loop = asyncio.get_running_loop()
        # One tracker per channel: its viewers share one decode, so they share the tracks too.
        tracker = self._tracker_factory()
        schedule = self._cadence.schedule()
        try:
            while True:
                try:
                    frame, position_s = await latest.get()
                except MailboxClosed:
                    break  # the end of a non-looping file, or an unreadable one
                faces = await self._analyse(frame, schedule)
                if faces is None:
                    break
                tracked = tracker.update(faces, position_s)  # the file's time: earlier at a rewind, a reset
                jpeg = await loop.run_in_executor(self._executor, _annotate, frame, tracked)
                for viewer in list(channel.viewers):
                    if not viewer.closed and viewer.put(jpeg) is not None:
                        self._metrics.frames_dropped.labels("video").inc()
        except Exception:
            logger.exception("video producer for %s failed", channel.path.name)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            for viewer in channel.viewers:
                viewer.close()

    async def _read(self, channel: _Channel, latest: LatestMailbox[tuple[np.ndarray, float]]) -> None:
        video = VideoReader(channel.path, loop=channel.loop, max_width=VIDEO_MAX_WIDTH)
        try:
            # aclosing releases the decoder however we leave (cancelled, or a viewer error).
            async with contextlib.aclosing(video.frames()) as frames:
                async for frame in frames:
                    # A frame not analysed yet is replaced by the newer one: analysis slower
                    # than the file's fps skips frames, and says so in the metrics.
                    if latest.put((frame, video.position_s)) is not None:
                        self._metrics.frames_dropped.labels("video").inc()
        except VideoError as exc:
            logger.warning("video %s: %s", channel.path.name, exc)
        finally:
            latest.close()

    async def _analyse(self, frame: np.ndarray, schedule: DetectionSchedule) -> tuple[Face, ...] | None:
        """The faces of `frame`; () when they cannot be had now; None when the server stops."""
        outcome = await submit(self._batcher, self._metrics, "video", frame, schedule.plan())
        if isinstance(outcome, Refused):
            # Busy or failed: the webcam clients come first, so show this frame without boxes
            # rather than wait.
            return None if outcome.reason is Reason.SHUTDOWN else ()
        schedule.observe(outcome.width, outcome.height, [face.box for face in outcome.faces])
        return outcome.faces
