"""`python -m fer_async.bench.decode VIDEO...`: how fast this machine decodes each file and does nothing else.

    python -m fer_async.bench.decode ../shared/data/videos/*

Each file is read as `python -m fer_async.analyze` reads it (`FrameReader`: OpenCV's FFmpeg,
with the decoder's own threads), every frame decoded to BGR and then dropped. No analysis of
the file can be faster on this machine, since the analysis decodes the same frames and then
searches and classifies them on the same cores: the figure is the bound its "x real time" is
compared with. One row per file (frames, wall seconds, frames/s, x real time at the file's
frame rate, CPU ms per frame of this whole process, decoder threads included), then, as the
last line, one JSON object with the rows.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fer_async.analyze.source import FrameReader, InputError, open_source


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def decode_only(path: Path) -> dict[str, Any]:
    """One file decoded from its first frame to its last: frames, seconds, and the rates."""
    info = open_source(path)
    reader = FrameReader(info)
    started, cpu_started = time.perf_counter(), _cpu_s()
    frames = sum(1 for _, frame, _ in reader.frames(lambda _: True) if frame is not None)
    wall_s, cpu_s = time.perf_counter() - started, _cpu_s() - cpu_started
    fps = frames / wall_s if wall_s > 0 else 0.0
    return {
        "file": path.name,
        "frames": frames,
        "seconds": round(wall_s, 3),
        "fps": round(fps, 1),
        "x_real_time": round(fps / info.fps, 2) if info.fps > 0 else None,
        "cpu_ms_per_frame": round(cpu_s / frames * 1000, 2) if frames else None,
        "size": f"{info.width}x{info.height}",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer_async.bench.decode", description=__doc__.split("\n\n")[0])
    parser.add_argument("videos", nargs="+", type=Path, help="video files")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'file':24s} {'size':>9s} {'frames':>6s} {'s':>6s} {'fps':>7s} {'x real time':>11s} {'CPU ms/frame':>12s}")
    for path in args.videos:
        try:
            row = decode_only(path)
        except InputError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 1
        rows.append(row)
        print(
            f"{row['file']:24s} {row['size']:>9s} {row['frames']:6d} {row['seconds']:6.2f} {row['fps']:7.1f} "
            f"{row['x_real_time'] or 0:11.2f} {row['cpu_ms_per_frame'] or 0:12.2f}"
        )
    print(json.dumps({"mode": "decode", "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
