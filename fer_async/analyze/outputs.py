"""Where the rows, the annotated video and the timeline go: files that are complete or say so.

Every output is written under a hidden temporary name next to its target and renamed when the
file was analysed to its end; an interrupted or cut-short analysis keeps what it wrote under
`NAME.incomplete.EXT` instead. So a file at the name asked for is always a complete one.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from fer_async.analyze.core import AnalysedFrame, FileSummary
from fer_async.imaging import draw_annotations
from fer_async.labels import EMOTION_COLOURS, EMOTIONS

logger = logging.getLogger(__name__)

ROW_FORMATS = (".csv", ".jsonl")
INCOMPLETE = ".incomplete"
STEM_FIELD = "{stem}"
NAME_MAX = 255  # bytes in one file name on ext4, XFS, btrfs, tmpfs, NTFS (in UTF-16 units there)
PLOT_MAX_TRACKS = 6  # more panels than this are unreadable; the longest tracks are shown
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection"):
# a file named `=HYPERLINK(...)+cmd.mp4` would do that in the file column.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PLOT_NEEDS = "--plot needs matplotlib: pip install 'fer_async[analyze]'"
# Every line break str.splitlines knows (CR and LF, and VT, FF, FS-RS, NEL, U+2028/9): a row split
# by any of them is two rows to whoever reads lines that way.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# The other control characters but tab: a NUL makes tools take the file for binary, an ESC is a
# terminal's escape sequence when someone prints the CSV.
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f]")


class OutputError(ValueError):
    """An output name that cannot work (wrong suffix, several inputs onto one file)."""


class WriteError(OSError):
    """An output the disk did not take (full, a quota, a volume gone), named: a bare
    `[Errno 28] No space left on device` does not say which of the outputs' disks filled."""

    def __init__(self, target: Path, exc: OSError | str) -> None:
        self.reason = exc if isinstance(exc, str) else (exc.strerror or str(exc))
        super().__init__(f"{target}: cannot be written: {self.reason}")


def _name_within(prefix: str, stem: str, tail: str) -> str:
    """`prefix + stem + tail`, the stem shortened to fit NAME_MAX: an output's own name may fit
    where the longer names derived from it would fail (ENAMETOOLONG) and lose its rows."""
    room = NAME_MAX - len(os.fsencode(prefix + tail))
    encoded = os.fsencode(stem)
    if len(encoded) > room:
        stem = encoded[:room].decode("utf-8", "ignore")  # "ignore": a character cut in two goes
        while len(os.fsencode(stem)) > room:  # a file system encoding other than UTF-8
            stem = stem[:-1]
    return prefix + stem + tail


def incomplete_path(target: Path) -> Path:
    return target.with_name(_name_within("", target.stem, INCOMPLETE + target.suffix))


def _temporary_path(target: Path) -> Path:
    # Same directory (so the rename is atomic) and same suffix (VideoWriter picks the container by it).
    return target.with_name(_name_within(".", target.stem, f".part{os.getpid()}{target.suffix}"))


def output_path(template: str, source: Path, several: bool, default_suffix: str) -> Path:
    """The output for `source`: `{stem}` is replaced, a directory gets `STEM + default_suffix`.

    With several inputs the template must name a directory or contain `{stem}`, so that no two
    inputs write the same file.
    """
    if template.endswith(("/", os.sep)) or Path(template).is_dir():
        return Path(template) / f"{source.stem}{default_suffix}"
    if STEM_FIELD in template:
        return Path(template.replace(STEM_FIELD, source.stem))
    if several:
        raise OutputError(f"{template}: with several inputs, give a directory (ending in /) or a name with {{stem}}")
    return Path(template)


def csv_cell(value: Any) -> Any:
    """`value` as a CSV cell: text a spreadsheet would run as a formula gets a leading `'`.

    The one place every CSV of rows goes through (`RowWriter`: the CLI's files and the server's
    downloads). Line breaks inside text become spaces, so each row stays one line (Python's csv
    module leaves a lone CR unquoted, which splits the row for every reader), and other control
    characters but tab become U+FFFD (a file may be named anything). Numbers stay
    numbers (a negative box coordinate is not text); JSON Lines and the Python API keep the
    exact values.
    """
    if not isinstance(value, str):
        return value
    cell = _CONTROLS.sub("\ufffd", _LINE_BREAKS.sub(" ", value))
    return "'" + cell if value.startswith(FORMULA_STARTS) else cell


class _Finishing:
    """A temporary file that becomes `target` when complete, `NAME.incomplete.EXT` otherwise."""

    def __init__(self, target: Path) -> None:
        self.target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = _temporary_path(target)

    def _rename(self, complete: bool) -> Path:
        final = self.target if complete else incomplete_path(self.target)
        os.replace(self.temporary, final)
        if complete:
            # A leftover from an earlier interrupted run would contradict the complete file.
            incomplete_path(self.target).unlink(missing_ok=True)
        return final

    def discard(self) -> None:
        self.temporary.unlink(missing_ok=True)


def check_writable(target: Path) -> None:
    """Raise WriteError now when `target` cannot be created: an output written only at the end
    (the timeline) would otherwise fail after the whole file was analysed."""
    temporary = _temporary_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary.touch()
    except OSError as exc:
        raise WriteError(target, exc) from exc
    temporary.unlink(missing_ok=True)


def _holds_frames(path: Path, frames: int) -> bool:
    """Whether the video at `path` opens and its header counts `frames` frames."""
    capture = cv2.VideoCapture(str(path))
    try:
        return capture.isOpened() and round(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == frames
    finally:
        capture.release()


class RowWriter(_Finishing):
    """CSV or JSON Lines, one row per face per analysed frame, flushed after every frame."""

    def __init__(self, target: Path | None, columns: Sequence[str]) -> None:
        self.columns = tuple(columns)
        self.stdout = target is None
        suffix = ".csv" if target is None else target.suffix.lower()
        if suffix not in ROW_FORMATS:
            raise OutputError(f"{target}: --out must end in .csv or .jsonl")
        self.jsonl = suffix == ".jsonl"
        self.file: IO[str]
        if target is None:
            self.file = sys.stdout
        else:
            super().__init__(target)
            self.file = self.temporary.open("w", newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self.file, fieldnames=self.columns, lineterminator="\n")
        if not self.jsonl:
            self._csv.writeheader()
        self._refused: WriteError | None = None  # the write the disk did not take
        self._whole = 0  # bytes of the file up to its last whole row
        if not self.stdout:
            self._flush()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        try:
            for row in rows:
                if self.jsonl:
                    self.file.write(json.dumps({k: row[k] for k in self.columns}) + "\n")
                else:
                    self._csv.writerow({k: csv_cell(v) for k, v in row.items()})
            # Flushed per frame: an interrupted run (Ctrl-C, a kill) leaves only whole rows behind.
            self._flush()
        except OSError as exc:
            self._refused = WriteError(self.target if not self.stdout else Path("-"), exc)
            raise self._refused from exc

    def _flush(self) -> None:
        self.file.flush()
        if not self.stdout:
            self._whole = self.file.tell()

    def finish(self, complete: bool) -> Path | None:
        if self.stdout:
            return None
        try:
            self.file.close()
        except OSError as exc:  # the file is closed all the same
            self._refused = self._refused or WriteError(self.target, exc)
        if self._refused is not None:
            # The write the disk refused may have taken part of a row: the rows end at the last whole one.
            os.truncate(self.temporary, self._whole)
            self._rename(False)
            raise self._refused
        return self._rename(complete)

    def discard(self) -> None:
        if not self.stdout:
            with contextlib.suppress(OSError):  # a disk that refused the rows refuses their last flush too
                self.file.close()
            super().discard()


class AnnotationWriter(_Finishing):
    """The input with boxes, track ids and labels drawn as the MJPEG stream draws them (mp4v)."""

    def __init__(self, target: Path, fps: float, size: tuple[int, int]) -> None:
        check_writable(target)  # a folder that takes no file: said so, not "OpenCV cannot write a video"
        super().__init__(target)
        self.image_output = target.suffix.lower() in (".jpg", ".jpeg", ".png")
        self._writer: cv2.VideoWriter | None = None
        self._last: np.ndarray | None = None
        self.frames = 0
        if not self.image_output:
            self._writer = cv2.VideoWriter(str(self.temporary), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
            if not self._writer.isOpened():
                raise OutputError(f"{target}: OpenCV cannot write a video there (use .mp4)")
        self.size = size

    def write(self, frame: AnalysedFrame) -> None:
        if frame.image is None:
            raise ValueError("annotating needs the frames: analyse with keep_images=True")
        image = frame.image
        draw_tracked(image, frame)
        if self._writer is not None:
            if (image.shape[1], image.shape[0]) != self.size:  # a stream that changes size midway
                image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
            self._writer.write(image)
            self.frames += 1
        else:
            self._last = image

    def finish(self, complete: bool) -> Path:
        if self._writer is not None:
            self._writer.release()
            # OpenCV only logs a frame it could not write (a full disk) and leaves a file without
            # its index (moov atom) that no player opens: checked, not reported as written.
            if self.frames and not _holds_frames(self.temporary, self.frames):
                self.discard()
                raise WriteError(self.target, f"the video holds fewer than its {self.frames} frames (disk full?)")
        elif self._last is not None and not cv2.imwrite(str(self.temporary), self._last):
            self.discard()
            raise WriteError(self.target, "OpenCV could not write this image (disk full?)")
        return self._rename(complete)

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.release()
        super().discard()


def draw_tracked(image: np.ndarray, frame: AnalysedFrame) -> None:
    """The MJPEG stream's own drawing: box, track id, label and its score per face."""
    draw_annotations(image, frame.faces)


def check_plot_available() -> None:
    """Refuse --plot before any frame is analysed, rather than after the rows are written."""
    if importlib.util.find_spec("matplotlib") is None:
        raise OutputError(PLOT_NEEDS)


def emotion_colours_rgb() -> dict[str, tuple[float, float, float]]:
    """The drawing colours (labels.EMOTION_COLOURS) as matplotlib RGB fractions, so plot and video match."""
    return {name: (r / 255, g / 255, b / 255) for name, (r, g, b) in EMOTION_COLOURS.items()}


def plot_timeline(
    summary: FileSummary, title: str, target: Path, *, duration_s: float = 0.0, complete: bool = True
) -> Path:
    """A PNG with one panel per track (the longest PLOT_MAX_TRACKS): each emotion's probability over time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OutputError(PLOT_NEEDS) from None
    tracks = summary.main_tracks(PLOT_MAX_TRACKS)
    colours = emotion_colours_rgb()
    panels = max(1, len(tracks))
    fig, axes = plt.subplots(panels, 1, figsize=(9, 0.4 + 1.9 * panels), sharex=True, squeeze=False)
    for ax, (track_id, stats) in zip(axes[:, 0], tracks, strict=False):
        for name, values in zip(EMOTIONS, stats.scores, strict=True):
            ax.plot(stats.times, values, color=colours[name], label=name, linewidth=1.4)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"face {track_id}")
        ax.grid(alpha=0.3)
    if not tracks:
        # Axes coordinates: at data (0.5, 0.5) the text left the canvas of a 1-frame clip's time axis.
        axes[0, 0].text(
            0.5, 0.5, "no face seen in 3 or more frames", ha="center", va="center", transform=axes[0, 0].transAxes
        )
    axes[0, 0].set_title(title, fontsize=10)
    axes[-1, 0].set_xlabel("time (s)")
    if duration_s > 0:  # the whole file, so where a face appears and leaves shows
        axes[-1, 0].set_xlim(0, duration_s)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(EMOTIONS), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    finishing = _Finishing(target)
    try:
        fig.savefig(finishing.temporary, dpi=80, format="png")
    except OSError as exc:
        finishing.discard()
        raise WriteError(target, exc) from exc
    finally:
        plt.close(fig)
    return finishing._rename(complete)
