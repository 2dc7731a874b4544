"""python -m fer_async.analyze VIDEO_OR_IMAGE_OR_DIR... [--out F.csv|F.jsonl|DIR/] [--annotate F.mp4] [--plot F.png]

Analyses each file in turn through the server's pipeline and writes one row per face per
analysed frame (frames without faces get one row with empty face fields, so time has no holes).
With several inputs, --out/--annotate/--plot take a directory (ending in /) or a name with
{stem}, e.g. `--out results/ --annotate 'annotated/{stem}.mp4' --plot 'plots/{stem}.png'`.
`--out -` writes CSV to stdout (then the summary goes to stderr).

Outputs are written under a temporary name and renamed when the file was analysed to its end.
Interrupted (Ctrl-C or SIGTERM) or cut short (a decoding error, or decoding that ends well before the end
the header announces: truncated or corrupt), they are kept as NAME.incomplete.EXT with every row
up to that point. Model, detector, tracker and detection schedule (--detect-every) options are
the server's, with its FER_* variables and defaults. With --ray [ADDRESS] the files, and long
files in chunks, run as Ray tasks (the [cluster] extra): on this machine's CPUs without
ADDRESS, on a cluster with `auto` or HOST:PORT (give it after the inputs). The rows are the
plain run's; one progress bar covers all files. Exit status: 0 all files complete; 1 some
input could not be analysed (or only partly); 2 usage error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import IO, Any

from fer_async.analyze.chunks import CHUNK_FRAMES, restart_period
from fer_async.analyze.core import (
    ANALYSIS_MAX_WIDTH,
    AnalysedFrame,
    Ending,
    FileAnalysis,
    FileSummary,
    InputError,
    SourceInfo,
    columns,
    frame_rows,
    open_source,
)
from fer_async.analyze.distributed import LOCAL
from fer_async.analyze.outputs import (
    AnnotationWriter,
    OutputError,
    RowWriter,
    WriteError,
    check_plot_available,
    check_writable,
    output_path,
    plot_timeline,
)
from fer_async.analyze.source import IMAGE_EXTENSIONS, video_files
from fer_async.analyze.stages import analyzer_stages
from fer_async.config import MODEL_OPTIONS, add_model_options, resolve_options
from fer_async.loading import load_analyzer, load_detector
from fer_async.schedule import SCHEDULE_OPTIONS, full_share
from fer_async.tracker import TRACKER_OPTIONS, tracker_for
from fer_async.video import VIDEO_EXTENSIONS

PROG = "python -m fer_async.analyze"
INPUT_SUFFIXES = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
# The server's options this command takes, with the server's defaults.
SERVER_OPTIONS = TRACKER_OPTIONS + SCHEDULE_OPTIONS + MODEL_OPTIONS
EXIT_STATUS = {
    Ending.DONE: 0,
    Ending.STOPPED: EXIT_INTERRUPTED,
    Ending.CUT_SHORT: EXIT_FAILED,
    Ending.NO_FRAMES: EXIT_FAILED,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path, help="video files, JPEG/PNG images, or directories of them")
    p.add_argument(
        "--out",
        metavar="FILE|DIR/|-",
        help="rows: FILE.csv, FILE.jsonl, DIR/ (one CSV per input), a {stem} template, or -",
    )
    p.add_argument("--annotate", metavar="FILE.mp4|DIR/", help="annotated video: FILE.mp4, DIR/ or a {stem} template")
    p.add_argument(
        "--plot",
        metavar="FILE.png|DIR/",
        help="timeline PNG per input (needs matplotlib): FILE.png, DIR/ or a {stem} template",
    )
    p.add_argument("--every", type=int, default=1, metavar="N", help="analyse every N-th frame (default: 1)")
    p.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL,
        metavar="ADDRESS",
        help="run the files, and long files in chunks, as Ray tasks (needs fer_async[cluster]): alone, a Ray on "
        "this machine's CPUs; 'auto' or HOST:PORT joins a running cluster. Give it after the inputs",
    )
    p.add_argument(
        "--chunk-frames",
        type=int,
        metavar="N",
        help=f"frames per chunk of a long file (default: {CHUNK_FRAMES}, rounded up to whole batches and detection "
        "periods): a Ray task each with --ray; the face search restarts at each chunk with or without it, so the "
        "plain run gives --ray's rows for the same N",
    )
    # --smoothing-ms --label-margin --detect-every --weights --model-name --runtime --model-precision
    # --flip-tta --detector(-model) --align: the server's own options, so a file gets the server's labels.
    add_model_options(p, SERVER_OPTIONS)
    p.add_argument(
        "--max-width",
        type=int,
        default=ANALYSIS_MAX_WIDTH or 0,
        metavar="PX",
        help="shrink frames to this width before detection (640: as the video stream does); 0 = the file's own "
        "size (default: %(default)s)",
    )
    args = p.parse_args(argv)
    if args.every < 1:
        p.error("--every must be at least 1")
    if args.max_width != 0 and args.max_width < 16:
        p.error("--max-width must be 0 or at least 16")
    if args.ray is not None and (Path(args.ray).exists() or Path(args.ray).suffix.lower() in INPUT_SUFFIXES):
        p.error(f"--ray takes an address, not an input ({args.ray}): give the inputs before --ray")
    if args.chunk_frames is not None and args.chunk_frames < 1:
        p.error("--chunk-frames must be at least 1")
    # Command line > FER_* > default, checked as the server checks them.
    args.settings = resolve_options(p, args, SERVER_OPTIONS)
    return args


def _error(message: str) -> None:
    print(f"analyze: error: {message}", file=sys.stderr, flush=True)


class _StopOnInterrupt:
    """The first Ctrl-C or SIGTERM (`timeout`, `docker stop`, a batch system's cancel) asks to stop
    after the frame in hand, so the outputs are kept as .incomplete; a second one stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnInterrupt:
        self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def _progress(total: int, name: str) -> Any:
    from tqdm import tqdm

    # disable=None: a bar on a terminal, nothing when stderr is piped or redirected.
    return tqdm(total=total or None, unit="frame", desc=name, disable=None, file=sys.stderr, dynamic_ncols=True)


def _analyse_file(
    args: argparse.Namespace,
    analysis: FileAnalysis,
    several: bool,
    stop: _StopOnInterrupt,
    report: IO[str],
    bar: Any | None,
) -> int:
    """Analyse one file into its outputs; the exit status it earns. `bar` counts frames (None: the caller's)."""
    info = analysis.info
    if args.plot is not None:
        check_writable(output_path(args.plot, info.path, several, "_timeline.png"))
    rows_out = None
    if args.out is not None:
        target = None if args.out == "-" else output_path(args.out, info.path, several, ".csv")
        rows_out = RowWriter(target, columns(analysis.smoothed))
    video_out = None
    if args.annotate is not None:
        try:
            target = output_path(args.annotate, info.path, several, "_annotated.mp4")
            video_out = AnnotationWriter(target, info.fps or 25.0, (info.width, info.height))
        except BaseException:
            if rows_out is not None:
                rows_out.discard()  # no orphaned temporary file
            raise
    summary = FileSummary(keep_timeline=args.plot is not None)
    name = str(info.path)
    started = time.perf_counter()
    ending: Ending | None = None
    failure: str | None = None
    write_error: OSError | None = None

    def on_frame(frame: AnalysedFrame) -> None:
        rows = frame_rows(name, frame, analysis.smoothed) if frame.analysed else []
        if rows_out is not None:
            rows_out.write(rows)
        if video_out is not None:
            video_out.write(frame)
        summary.add(frame, len(rows))
        if bar is not None:
            bar.update(1)

    try:
        ending = analysis.run(on_frame, lambda: stop.requested)
    except KeyboardInterrupt:  # the second Ctrl-C
        stop.requested = True
        ending = Ending.STOPPED
    except WriteError as exc:  # raised once every output is finished, so none is left half-named
        write_error = exc
    except Exception as exc:  # a bug or a decoder crash: keep what was written, say so
        failure = f"{info.path}: analysis failed at frame {analysis.frames_read}: {exc!r}"
    elapsed = time.perf_counter() - started
    if ending is Ending.NO_FRAMES:
        for writer in (rows_out, video_out):
            if writer is not None:
                writer.discard()
        _error(f"{info.path}: {analysis.describe_ending(ending)}")
        return EXIT_STATUS[ending]
    complete = ending is Ending.DONE
    written: list[Path | None] = []
    for writer in (rows_out, video_out):
        try:
            if writer is not None:
                written.append(writer.finish(complete))
        except OSError as exc:  # the other output is still finished: no hidden temporary left behind
            write_error = write_error or exc
    if write_error is not None:
        raise write_error
    if args.plot is not None and summary.frames_analysed:
        target = output_path(args.plot, info.path, several, "_timeline.png")
        title = f"{info.path.name}: emotion probabilities per face"
        duration = analysis.frames_read / info.fps if info.kind == "video" and info.fps else 0.0
        written.append(plot_timeline(summary, title, target, duration_s=duration, complete=complete))

    # A Ray run's files overlap: its speed is the whole run's (_run_ray).
    timing = (
        f"; {_speed(analysis.frames_read, elapsed, info.fps if info.kind == 'video' else 0)}" if bar is not None else ""
    )
    share = full_share(analysis.searches)
    full = "" if share is None else f"; full face detection on {share:.0%} of the analysed frames"
    print(
        f"{info.path.name}: {analysis.frames_read} frames read, {summary.frames_analysed} analysed "
        f"({summary.frames_with_faces} with faces), {summary.rows} rows, {len(summary.tracks)} tracks{timing}{full}",
        file=report,
    )
    for line in summary.lines():
        print(line, file=report)
    for path in written:
        if path is not None:
            print(f"  wrote {path}", file=report)
    report.flush()
    if ending is None:
        _error(failure or f"{info.path}: analysis failed")
        return EXIT_FAILED
    if ending is Ending.STOPPED:
        _error(f"{info.path}: interrupted at frame {analysis.frames_read}; rows so far kept as *.incomplete.*")
    elif ending is Ending.CUT_SHORT:
        _error(f"{info.path}: {analysis.describe_ending(ending)}; the rows up to there are kept as *.incomplete.*")
    return EXIT_STATUS[ending]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = [p for given in args.inputs for p in video_files(given)]
    if not paths:
        _error("no video or image files in " + ", ".join(str(p) for p in args.inputs))
        return EXIT_FAILED
    several = len(paths) > 1
    stems = [p.stem for p in paths]
    if several and len(set(stems)) < len(stems):
        _error("several inputs share a file name stem; their outputs would overwrite each other")
        return EXIT_USAGE
    try:
        for option, default in ((args.out, ".csv"), (args.annotate, ".mp4"), (args.plot, ".png")):
            if option is not None and option != "-":
                output_path(option, paths[0], several, default)
        if args.plot is not None:
            check_plot_available()
    except OutputError as exc:
        _error(str(exc))
        return EXIT_USAGE
    status = 0
    sources: list[SourceInfo] = []
    for path in paths:  # cheap checks first: no model load for a folder of bad files
        try:
            sources.append(open_source(path))
        except InputError as exc:
            _error(str(exc))
            status = EXIT_FAILED
    if not sources:
        return status
    report = sys.stderr if args.out == "-" else sys.stdout
    if args.ray is not None:
        return max(status, _run_ray(args, sources, several, report))
    try:
        analyzer = load_analyzer(args.settings)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    print(f"detector: {getattr(analyzer.detector, 'name', args.settings.detector)}", file=report)
    # Which network produced the numbers: --runtime and --model-precision as they took effect.
    served = [getattr(analyzer.model, name, "?") for name in ("model_file", "runtime", "precision")]
    print("model: {} ({}, {})".format(*served), file=report)
    with analyzer, _StopOnInterrupt() as stop:
        analyses = (
            FileAnalysis(
                info,
                analyzer_stages(analyzer),
                tracker_for(args.settings),
                every=args.every,
                max_width=args.max_width or None,
                keep_images=args.annotate is not None,
                cadence=args.settings.cadence,
                restart_every=restart_period(args.every, args.settings.cadence, args.chunk_frames or CHUNK_FRAMES),
            )
            for info in sources
        )
        return max(status, _analyse_all(args, analyses, several, stop, report, own_bars=True))


def _analyse_all(
    args: argparse.Namespace,
    analyses: Iterable[FileAnalysis],
    several: bool,
    stop: _StopOnInterrupt,
    report: IO[str],
    own_bars: bool,
) -> int:
    """Each file into its outputs, one after the other (a bar each with `own_bars`); the exit status."""
    status = 0
    for analysis in analyses:
        info = analysis.info
        try:
            with _progress(info.frame_count, info.path.name) if own_bars else contextlib.nullcontext() as bar:
                result = _analyse_file(args, analysis, several, stop, report, bar)
        except (OutputError, OSError) as exc:  # an output that cannot be written: no point going on
            _error(str(exc))
            return EXIT_USAGE
        if result == EXIT_INTERRUPTED:
            return result
        status = max(status, result)
    return status


def _run_ray(args: argparse.Namespace, sources: list[SourceInfo], several: bool, report: IO[str]) -> int:
    """The files as Ray tasks (distributed.RayRun), each file's rows written as the plain run writes them."""
    from fer_async.analyze.distributed import RayRun, RayUnavailable, describe, ray_session

    try:  # the detector this machine resolves is the one every node must run (the chunks say which ran)
        detector = load_detector(args.settings)[1]
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    print(f"detector: {detector}", file=report)
    settings = args.settings.replace(detector=detector)
    started = time.perf_counter()
    try:
        with ray_session(args.ray), _StopOnInterrupt() as stop:
            with _progress(sum(info.frame_count for info in sources), "all files") as bar:
                run = RayRun(
                    sources,
                    settings,
                    every=args.every,
                    max_width=args.max_width or None,
                    chunk_frames=args.chunk_frames or CHUNK_FRAMES,
                    on_frames=bar.update,
                )
                analyses = [
                    run.analysis(file, tracker_for(settings), keep_images=args.annotate is not None)
                    for file in range(len(sources))
                ]
                try:
                    status = _analyse_all(args, analyses, several, stop, report, own_bars=False)
                finally:
                    run.close()
                frames = sum(analysis.frames_read for analysis in analyses)
            print(describe(run.board), file=report)
    except RayUnavailable as exc:
        _error(str(exc))
        return EXIT_USAGE
    elapsed = time.perf_counter() - started
    seconds = sum(info.duration_s for info in sources)
    fps = sum(info.frame_count for info in sources) / seconds if seconds else 0.0
    print(f"{len(sources)} file{'s' * (len(sources) != 1)}: {_speed(frames, elapsed, fps)}", file=report)
    return status


def _speed(frames: int, elapsed: float, fps: float) -> str:
    """`elapsed` s, frames/s, and how many times real time at `fps` (0: not a video)."""
    speed = frames / elapsed if elapsed > 0 else 0.0
    realtime = f", {speed / fps:.2f}x real time" if fps else ""
    return f"{elapsed:.1f} s, {speed:.1f} frames/s{realtime}"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before the analysis started (loading the model) or a second Ctrl-C
        sys.exit(EXIT_INTERRUPTED)
