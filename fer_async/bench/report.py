"""What the bench prints: percentiles, the Prometheus histogram it reads, the table."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fer_async.schedule import Search, full_share


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100, linear interpolation), None for no values."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def round_or_none(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def parse_histogram(text: str, needle: str = "batch_size") -> tuple[float, float] | None:
    """(sum, count) of the Prometheus histogram/summary whose name contains `needle`.

    Sums over label sets; `None` when no such metric is exported.
    """
    total: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not match:
            continue
        name, value = match.group(1), match.group(3)
        if needle not in name:
            continue
        for suffix in ("_sum", "_count"):
            if name.endswith(suffix):
                with contextlib.suppress(ValueError):
                    total[suffix] = total.get(suffix, 0.0) + float(value)
    if "_sum" not in total or "_count" not in total:
        return None
    return total["_sum"], total["_count"]


# The stages the server counts in fer_stage_seconds_total (fer_async.metrics.STAGES), in the
# order a WebSocket frame meets them.
PROFILE_STAGES = ("receive", "decode", "detect", "crop", "model", "json", "send")


# A `--workers N` server labels every series with its worker; the profile is of the whole server.
_WORKER_LABEL = re.compile(r',?worker="[^"]*"')


def parse_samples(text: str) -> dict[tuple[str, str], float]:
    """Every sample of a Prometheus text page: (name, label text) -> value, summed over workers."""
    samples: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if match and not line.startswith("#"):
            labels = _WORKER_LABEL.sub("", match.group(2) or "").replace("{,", "{")
            key = (match.group(1), "" if labels == "{}" else labels)
            with contextlib.suppress(ValueError):
                samples[key] = samples.get(key, 0.0) + float(match.group(3))
    return samples


def _loops(text: str) -> int:
    """How many event loops (worker processes) a page reports."""
    return max(1, len(re.findall(r"(?m)^fer_event_loop_cpu_seconds\{", text)))


def stage_profile(before: str, after: str, wall_s: float) -> dict[str, float] | None:
    """Mean server ms per WebSocket frame by stage, and the event loop's idle share (%), between two scrapes.

    None when the server does not export the stage counters (an older server) or answered no
    frame in between. The model stage is the shared batch call divided among the batch's frames.
    """
    start, end = parse_samples(before), parse_samples(after)
    frames_key = ("fer_frames_total", '{source="ws"}')
    if frames_key not in start or frames_key not in end:
        return None
    frames = end[frames_key] - start[frames_key]
    if frames <= 0:
        return None
    profile: dict[str, float] = {}
    for stage in PROFILE_STAGES:
        key = ("fer_stage_seconds_total", f'{{stage="{stage}"}}')
        if key not in start or key not in end:
            return None
        profile[stage] = round((end[key] - start[key]) / frames * 1000.0, 3)
    loop_key = ("fer_event_loop_cpu_seconds", "")
    if loop_key in start and loop_key in end and wall_s > 0:
        busy = (end[loop_key] - start[loop_key]) / wall_s / _loops(after)  # the mean loop's
        profile["loop_idle_pct"] = round(max(0.0, 100.0 * (1.0 - busy)), 1)
    return profile


def same_processes(before: str, after: str) -> bool:
    """Whether two scrapes came from the same server processes (`fer_instance{id}`).

    Behind a proxy with several replicas, each scrape reaches any of them, and the difference
    of two replicas' counters means nothing. A page without ids (an older server) counts as
    the same.
    """
    start, end = parse_samples(before), parse_samples(after)
    return {key for key in start if key[0] == "fer_instance"} == {key for key in end if key[0] == "fer_instance"}


def search_counts(before: str, after: str) -> dict[str, int] | None:
    """Frames by the face search they got (`fer_detections_total{search}`) between two scrapes; None without it."""
    start, end = parse_samples(before), parse_samples(after)
    counts = {}
    for search in Search:
        key = ("fer_detections_total", f'{{search="{search.value}"}}')
        if key not in start or key not in end:
            return None
        counts[search.value] = round(end[key] - start[key])
    return counts


def detection_figures(counts: Mapping[str, int]) -> dict[str, Any]:
    """How often full detection ran: the share (%) of frames, and the counts by search."""
    share = full_share(counts)
    return {"full_detection_pct": None if share is None else round(100 * share, 1), "searches": dict(counts)}


def format_detection(label: str, figures: Mapping[str, Any]) -> str:
    counts = figures["searches"]
    total = sum(counts.values())
    if not total:
        return f"detection, {label}: no frames"
    pct = {search: 100 * counts.get(search, 0) / total for search in Search}
    return (
        f"detection, {label}: full face detection on {figures['full_detection_pct']:.1f}% of {total} frames "
        f"({pct[Search.FULL]:.1f}% scheduled or without hints, {pct[Search.REGIONS_LOST]:.1f}% after a face was "
        f"not in its region); regions only on {pct[Search.REGIONS]:.1f}%"
    )


def format_profile(clients: int, profile: dict[str, float]) -> str:
    stages = "  ".join(f"{stage} {profile[stage]:.2f}" for stage in PROFILE_STAGES)
    idle = profile.get("loop_idle_pct")
    idle_text = "" if idle is None else f"  | event loop idle {idle:.0f}%"
    return f"profile, {clients} clients, server ms per frame: {stages}{idle_text}"


COLUMNS = (
    ("clients", "clients", 7),
    ("frames", "frames", 7),
    ("fps", "fps", 8),
    ("p50_ms", "p50 ms", 8),
    ("p95_ms", "p95 ms", 8),
    ("p99_ms", "p99 ms", 8),
    ("mean_batch", "batch", 6),
    ("dropped", "dropped", 8),
    ("errors", "errors", 7),
    ("timeouts", "t/o", 4),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
        return str(value)

    header = " ".join(title.rjust(width) for _, title, width in COLUMNS)
    lines = [header, "-" * len(header)]
    lines += [" ".join(cell(row.get(key)).rjust(width) for key, _, width in COLUMNS) for row in rows]
    return "\n".join(lines)


def emit(text: str) -> None:
    """The bench's product goes to stdout (progress goes to the log, on stderr)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
