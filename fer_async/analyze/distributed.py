"""Many files, and long files in chunks, as Ray tasks; the rows come out as in the plain run.

`python -m fer_async.analyze VIDEOS... --out DIR/ --ray [ADDRESS]` and `analyze_video(..., ray=...)`.
Each file is cut into chunks of `chunks.restart_period` frames (`CHUNK_FRAMES` rounded up to
whole `chunks.chunk_unit`s: the batches of the model and the full detections of the
--detect-every schedule fall where the plain run has them, and the plain run restarts its
schedule where each chunk's restarts, at its first frame). A task
runs the raw stage of one chunk (`analyse_chunk`: decode, detect, crop, classify) and returns its
`RawFrame`s: boxes and scores, a few hundred bytes a frame, never pixels. The driver feeds them,
chunk after chunk, to the one `FileAnalysis` (tracker, rows, ending) of the file, the code the
plain run uses. Before a chunk is used, its first frame (timestamp and pixel digest) must be the
frame after the previous chunk's end, as that chunk decoded it; where it is not (a seek that
missed), the chunk is run again from the file's start.

Every node needs fer_async (with this extra), the weights and the inputs at the same paths (a
shared filesystem, or the same image and volume on Kubernetes). Each chunk reports the detector
and network it ran; a node that ran others (no YuNet file there, say) fails the file, loudly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fer_async.analyze.chunks import CHUNK_FRAMES as CHUNK_FRAMES  # re-exported: the CLI and the API name it here
from fer_async.analyze.chunks import FRAMES_PER_CALL, restart_period
from fer_async.analyze.core import FileAnalysis, RawFrame, RawStage
from fer_async.analyze.source import FrameMarker, FrameReader, InputError, SourceInfo, frame_times
from fer_async.analyze.stages import analyzer_stages
from fer_async.config import Settings
from fer_async.tracker import Tracker

if TYPE_CHECKING:
    from fer_async.recognition import Analyzer

logger = logging.getLogger(__name__)

LOCAL = "local"  # --ray without an address: a Ray of this machine alone
# A local Ray's shared object store. Chunk results are boxes and scores (kilobytes per chunk), so
# Ray's default (30 % of the machine's memory) would only reserve memory nobody uses.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024
WAIT_S = 0.5  # how long one wait for results lasts: Ctrl-C is noticed between two waits


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached."""


@dataclass(frozen=True)
class ChunkSpec:
    """One task: frames `start` to `stop` (None: the end) of `info`, detected and classified as `settings` say."""

    info: SourceInfo
    settings: Settings
    every: int
    max_width: int | None
    start: int
    stop: int | None
    start_ms: float | None  # frame `start`'s timestamp, from the packets (source.frame_times)
    sequential: bool = False  # decode from the file's first frame: the run again of a chunk whose seek missed
    restart_every: int | None = None  # chunks.restart_period: the chunks' length


@dataclass(frozen=True)
class ChunkResult:
    """What a task sends back: raw frames and how its decoding went (no pixels)."""

    frames: tuple[RawFrame, ...]
    frames_read: int
    decode_failed: bool
    first: FrameMarker | None
    after: FrameMarker | None
    after_state: str
    stack: tuple[str, ...]  # detector, network file, runtime, precision
    node: str
    from_start: bool  # decoded from the file's first frame (no seek could find its first frame)


_ANALYZERS: dict[Settings, tuple[Analyzer, tuple[str, ...]]] = {}


def _analyzer(settings: Settings) -> tuple[Analyzer, tuple[str, ...]]:
    """This worker's Analyzer for `settings`, loaded once: a worker runs many chunks."""
    if settings not in _ANALYZERS:
        from fer_async.loading import load_analyzer

        analyzer = load_analyzer(settings)
        model = analyzer.model
        stack = (
            str(getattr(analyzer.detector, "name", settings.detector)),
            *(str(getattr(model, name, "?")) for name in ("model_file", "runtime", "precision")),
        )
        _ANALYZERS[settings] = (analyzer, stack)
    return _ANALYZERS[settings]


def _node() -> str:
    try:
        import ray

        if ray.is_initialized():
            return str(ray.get_runtime_context().get_node_id())
    except ImportError:
        pass
    return "local"


def analyse_chunk(spec: ChunkSpec) -> ChunkResult:
    """The raw stage of one chunk: what a Ray task runs."""
    if not spec.info.path.is_file():
        raise InputError(f"{spec.info.path}: not found on node {_node()}: every node needs the inputs at the same path")
    analyzer, stack = _analyzer(spec.settings)
    reader = FrameReader(spec.info, spec.start, spec.stop, spec.start_ms, spec.sequential)
    stage = RawStage(
        reader,
        analyzer_stages(analyzer),
        spec.every,
        spec.max_width,
        FRAMES_PER_CALL,
        cadence=spec.settings.cadence,
        restart_every=spec.restart_every,
    )
    frames = tuple(stage)
    return ChunkResult(
        frames,
        reader.frames_read,
        reader.decode_failed,
        reader.first,
        reader.after,
        reader.after_state,
        stack,
        _node(),
        spec.start > 0 and reader.sequential,
    )


def plan(info: SourceInfo, settings: Settings, every: int, max_width: int | None, chunk_frames: int) -> list[ChunkSpec]:
    """The chunks of one file: one for an image or a short video, else about `chunk_frames` frames each."""
    size = restart_period(every, settings.cadence, chunk_frames)
    whole = [ChunkSpec(info, settings, every, max_width, 0, None, None, restart_every=size)]
    if info.kind != "video" or 0 < info.frame_count <= size:
        return whole
    times = frame_times(info.path)  # also counts the frames of a file whose header does not
    count = len(times) if times is not None else info.frame_count  # the packets: better than the header
    starts = list(range(0, count, size))
    if len(starts) < 2:
        return whole
    stops: list[int | None] = [*starts[1:], None]  # the last chunk runs to the end, wherever that is
    return [
        ChunkSpec(info, settings, every, max_width, start, stop, None if times is None else times[start], False, size)
        for start, stop in zip(starts, stops, strict=True)
    ]


class ChunkBoard:
    """Every chunk of every file, queued in the order they are used and run at most `window` at a time;
    results taken in any order, used in order.

    A chunk no longer wanted (its file ended early, failed, or the run stopped) is dropped from the
    queue, or, once running, left to finish unread outside the window, so that it never holds up
    the chunks that are wanted: what each file leaves unread is bounded by the window. Never
    `ray.cancel`: a cancel that races with the task's reply aborts the driver in Ray 2.60 (a failed
    RAY_CHECK in TaskManager::CompletePendingTask: "Tried to complete task that was not pending").
    """

    def __init__(self, on_done: Callable[[int], None], window: int | None = None) -> None:
        import ray

        self._ray = ray
        self._remote = ray.remote(num_cpus=1)(analyse_chunk)
        # Enough queued on every CPU that a worker finishing a chunk finds the next one waiting.
        self.window = window or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        self._queued: dict[tuple[int, int], ChunkSpec] = {}  # in the order they are used
        self._running: dict[Any, tuple[int, int]] = {}  # object ref -> (file, chunk)
        self._done: dict[tuple[int, int], ChunkResult | BaseException] = {}
        self._counted: set[tuple[int, int]] = set()
        self._on_done = on_done  # called with the frames of each chunk, once per chunk
        self.stack: tuple[str, ...] | None = None
        self.nodes: set[str] = set()
        self.chunks = 0
        self.from_start = 0  # chunks decoded from the file's start
        self.most_running = 0

    def add(self, key: tuple[int, int], spec: ChunkSpec) -> None:
        """Queue a chunk: it starts when the window has room."""
        self._queued[key] = spec
        self._fill()

    def submit(self, key: tuple[int, int], spec: ChunkSpec) -> None:
        """Start a chunk now, whatever the window (the run again of a chunk that is needed next)."""
        self._running[self._remote.remote(spec)] = key
        self.most_running = max(self.most_running, len(self._running))

    def _fill(self) -> None:
        while self._queued and len(self._running) < self.window:
            key = next(iter(self._queued))
            self.submit(key, self._queued.pop(key))

    def result(self, key: tuple[int, int]) -> ChunkResult:
        """The result of chunk `key`, waiting for it (and taking in whatever else finishes meanwhile)."""
        while key not in self._done:
            if key in self._queued:  # needed now: ahead of the window
                self.submit(key, self._queued.pop(key))
            elif key not in self._running.values():
                raise RuntimeError(f"chunk {key} was never submitted")
            ready, _ = self._ray.wait(list(self._running), num_returns=1, timeout=WAIT_S)
            for ref in ready:
                self._take(ref)
            self._fill()
        outcome = self._done.pop(key)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _take(self, ref: Any) -> None:
        key = self._running.pop(ref)
        try:
            result: ChunkResult = self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as exc:  # the worker's own exception, without Ray's wrapping
            cause = getattr(exc, "cause", None)
            self._done[key] = cause if isinstance(cause, Exception) else RuntimeError(str(exc))
            return
        except Exception as exc:  # a worker or node that died
            self._done[key] = exc
            return
        self.chunks += 1
        self.from_start += result.from_start
        self.nodes.add(result.node)
        if self.stack is None:
            self.stack = result.stack
        if result.stack != self.stack:
            self._done[key] = RuntimeError(
                f"a node ran {' '.join(result.stack)} where the others ran {' '.join(self.stack)}: "
                "give every node the same fer_async, weights and YuNet file"
            )
            return
        self._done[key] = result
        if key not in self._counted:
            self._counted.add(key)
            self._on_done(len(result.frames))

    def forget(self, file: int) -> None:
        """Drop what is left of one file (it ended, failed or was stopped)."""
        for key in [k for k in self._queued if k[0] == file]:
            del self._queued[key]
        for ref, (f, _) in list(self._running.items()):
            if f == file:
                del self._running[ref]  # it runs to its end, unread
        for key in [k for k in self._done if k[0] == file]:
            del self._done[key]
        self._fill()

    def close(self) -> None:
        """Drop everything. What runs still finishes: a local Ray stops with the run, and a cluster
        ends a job's tasks when its driver leaves."""
        self._queued.clear()
        self._running.clear()
        self._done.clear()


@dataclass
class StitchedChunks:
    """The raw frames of one file from its chunks, in order, each chunk checked to start where the last ended.

    A `RawSource` for FileAnalysis. With `keep_images` the frames are decoded once more here
    (for --annotate): pixels never travel between processes.
    """

    board: ChunkBoard
    file: int
    specs: Sequence[ChunkSpec]
    keep_images: bool = False
    frames_read: int = 0
    decode_failed: bool = False

    def __iter__(self) -> Iterator[RawFrame]:
        local = FrameReader(self.specs[0].info) if self.keep_images else None
        images = local.frames(lambda i: True) if local is not None else None
        try:
            for raw in self._raw():
                if images is not None:
                    for index, image, _ in images:
                        if index == raw.index:
                            raw = dataclasses.replace(raw, image=image)
                            break
                    else:
                        assert local is not None
                        self.frames_read, self.decode_failed = local.frames_read, local.decode_failed
                        return
                yield raw
        finally:
            self.board.forget(self.file)

    def _raw(self) -> Iterator[RawFrame]:
        previous: ChunkResult | None = None
        for number, spec in enumerate(self.specs):
            result = self.board.result((self.file, number))
            if previous is not None:
                if previous.after_state == "end":
                    return  # the file ends where the previous chunk ended
                if previous.after_state == "undecodable" and spec.start % spec.every == 0:
                    self.decode_failed = True  # the plain run fails on that frame too
                    return
                if previous.after is None or result.first != previous.after:
                    logger.info(
                        "%s: chunk at frame %d did not meet the one before; decoding it from the start",
                        spec.info.path,
                        spec.start,
                    )
                    self.board.submit((self.file, number), dataclasses.replace(spec, sequential=True))
                    result = self.board.result((self.file, number))
            for raw in result.frames:
                # Counted as each frame is handed out, as the plain run counts them: an interrupted
                # run's summary and its "interrupted at frame N" must not lag a chunk behind.
                self.frames_read = raw.index + 1
                yield raw
            self.frames_read = max(self.frames_read, result.frames_read)
            if result.decode_failed:
                self.decode_failed = True
                return
            if spec.stop is None or result.frames_read < spec.stop:
                return
            previous = result


class RayRun:
    """The files of one run, every chunk queued at once (`window` running at a time, default twice the
    cluster's CPUs); `analysis(n, ...)` is file n's FileAnalysis."""

    def __init__(
        self,
        sources: Sequence[SourceInfo],
        settings: Settings,
        *,
        every: int = 1,
        max_width: int | None,
        chunk_frames: int = CHUNK_FRAMES,
        on_frames: Callable[[int], None] = lambda n: None,
        window: int | None = None,
    ) -> None:
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be at least 1, got {chunk_frames}")
        self.board = ChunkBoard(on_frames, window)
        self.plans: list[list[ChunkSpec]] = []
        for file, info in enumerate(sources):  # the packet pass of each file, then its chunks go
            specs = plan(info, settings, every, max_width, chunk_frames)
            for number, spec in enumerate(specs):
                self.board.add((file, number), spec)
            self.plans.append(specs)
        self.every = every
        self.max_width = max_width

    def analysis(self, file: int, tracker: Tracker, *, keep_images: bool = False) -> FileAnalysis:
        specs = self.plans[file]
        raw = StitchedChunks(self.board, file, specs, keep_images)
        return FileAnalysis(specs[0].info, None, tracker, every=self.every, max_width=self.max_width, raw=raw)

    def close(self) -> None:
        self.board.close()


def describe(board: ChunkBoard) -> str:
    """Where the chunks ran and with what, for the CLI's report."""
    stack = board.stack or ("?",) * 4
    return (
        f"ray: {board.chunks} chunk{'s' * (board.chunks != 1)} on {len(board.nodes)} "
        f"node{'s' * (len(board.nodes) != 1)}, {board.from_start} decoded from their file's start; "
        f"detector {stack[0]}, model {stack[1]} ({stack[2]}, {stack[3]})"
    )


@contextlib.contextmanager
def ray_session(address: str | None, *, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the time of a run: joined at `address` ("auto", "HOST:PORT", "ray://HOST:PORT"), or
    started on this machine for `None`/"local" (its CPUs, a small object store) and stopped after.
    A Ray this process already joined is used as it is, and left running.
    """
    local = address in (None, LOCAL)
    if local:
        # A Ray of this machine alone: on the loopback address, without Ray's usage report.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs Ray: pip install 'fer_async[cluster]'") from None
    if ray.is_initialized():
        yield
        return
    options: dict[str, Any] = {"logging_level": logging.WARNING}
    if local:  # num_cpus None: Ray counts this machine's CPUs
        options |= {"num_cpus": num_cpus, "object_store_memory": LOCAL_OBJECT_STORE_BYTES, "include_dashboard": False}
    try:
        ray.init(address=LOCAL if local else address, **options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise RayUnavailable(f"cannot join the Ray cluster at {address}: {exc}") from None
    try:
        yield
    finally:
        ray.shutdown()
