"""The two-stage frame pipeline every entry point submits to: prepare per frame, classify per batch.

Stage 1, per frame, as soon as it arrives: decode + detect + crop (`Analyzer.prepare`) on the
detection threads (one per core; OpenCV releases the GIL). Stage 2, shared: the batcher gathers
the prepared frames of all callers and `Analyzer.classify` runs ONE model call for all their
faces on the model thread. The stages overlap: while the model classifies one batch, the
detection threads already prepare the next frames. Measured on 2 cores (README, "Speed"), the
one-stage design (a batch decoded and searched, then classified, then the next batch) left the
detection threads idle during every model call.

The bound of the old design is kept: frames being prepared count against the batcher's queue
limit, so a burst of uploads is refused ("server busy") instead of piling up in the pool.

A frame may come with `Hints` (the faces of its stream's previous frame, from the caller's
`schedule.DetectionSchedule`): then only the regions around them are searched. The pipeline
keeps nothing between frames. `prepare` and `classify` are the two stages on their own, for a
caller that needs a frame's faces before the next frame starts (a file analysis, whose next
hints are this frame's boxes) but wants the model calls batched all the same.
"""

from __future__ import annotations

import asyncio

from fer_async.batcher import Batcher, BatcherClosed, BatcherOverloaded
from fer_async.imaging import ImageError
from fer_async.labels import FrameResult
from fer_async.recognition import Analyzer, Frame, Prepared
from fer_async.schedule import PHOTO, FramePlan

PreparedBatcher = Batcher[Prepared, FrameResult]


class FramePipeline:
    """`submit(frame, plan) -> FrameResult`, raising what the batcher raises, or the frame's ImageError."""

    def __init__(self, analyzer: Analyzer, batcher: PreparedBatcher, max_queue: int) -> None:
        self._analyzer = analyzer
        self._batcher = batcher
        self._max_queue = max_queue
        self._preparing = 0

    @property
    def queue_size(self) -> int:
        """Frames accepted and not yet handed to the model: being prepared, or waiting for a batch."""
        return self._preparing + self._batcher.queue_size

    async def submit(self, frame: Frame, plan: FramePlan = PHOTO) -> FrameResult:
        return await self.classify(await self.prepare(frame, plan))

    async def prepare(self, frame: Frame, plan: FramePlan = PHOTO) -> Prepared:
        """Stage 1 on the detection threads: the frame decoded, searched and cropped (raises ImageError)."""
        if not self._batcher.running:
            raise BatcherClosed("the pipeline is closed")
        if self.queue_size >= self._max_queue:
            raise BatcherOverloaded(f"{self.queue_size} frames waiting")
        loop = asyncio.get_running_loop()
        self._preparing += 1
        try:
            prepared = await loop.run_in_executor(self._analyzer.prepare_executor, self._analyzer.prepare, frame, plan)
        finally:
            self._preparing -= 1
        if isinstance(prepared, ImageError):
            raise prepared
        return prepared

    async def classify(self, prepared: Prepared) -> FrameResult:
        """Stage 2: the prepared frame's faces classified in the next shared batch."""
        return await self._batcher.submit(prepared)
