"""fer_async.bench: tiny real runs (a real server subprocess, real sockets) and its parsers.

No assertion here is about speed: the runs are seconds long on a machine that may be busy.
They check that the tool works end to end and that its last line is the JSON it promises.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from fer_async import synthetic
from fer_async.analyze.core import AnalysedFrame
from fer_async.bench import cli, decode, harness, report
from fer_async.bench.detect_every import Run, compare
from fer_async.detector import YuNetDetector, create_detector
from fer_async.metrics import Metrics
from fer_async.schedule import Search
from fer_async.tracker import TrackedFace

KEYS = ("clients", "frames", "fps", "p50_ms", "p99_ms", "mean_batch", "dropped")


def last_json(out: str) -> dict[str, Any]:
    lines = [line for line in out.strip().splitlines() if line.strip()]
    assert lines, "the bench printed nothing"
    row = json.loads(lines[-1])
    assert isinstance(row, dict), lines[-1]
    return row


def check_full_detection_share(percent: float, detector: str, row: dict[str, Any]) -> None:
    if detector == "yunet":
        assert 0 < percent < 100, row
    else:
        assert detector == "haar" and percent == 100, row


def check_row(row: dict[str, Any], clients: int) -> None:
    for key in KEYS:
        assert key in row, f"missing {key!r} in {row}"
    assert row["clients"] == clients
    assert row["frames"] > 0, row  # the server answered frames (a correctness check, not a speed one)
    assert row["errors"] == 0, row
    assert row["timeouts"] == 0, row
    # Every frame holds one face, so every answered frame is a result with a latency.
    assert row["p50_ms"] is not None and row["p50_ms"] <= row["p99_ms"]
    # One frame in flight per client: the server never has a frame to replace.
    assert row["dropped"] == 0, row


# ------------------------------------------------------------------------------ helpers


def test_the_clients_face_moves_a_few_pixels_a_frame_round_a_loop(yunet_model: Path) -> None:
    frames = synthetic.moving_frames(16)
    assert len(set(frames)) == 16
    detector = YuNetDetector(yunet_model)
    centres = []
    for data in frames:
        (box,) = detector.detect(np.asarray(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)))
        centres.append(np.array([box[0] + box[2] / 2, box[1] + box[3] / 2]))
    steps = [np.hypot(*(b - a)) for a, b in zip(centres, centres[1:] + centres[:1], strict=True)]  # round the loop
    assert max(steps) < 0.2 * box[2], steps  # a region around the last box finds it again
    assert np.ptp(np.array(centres), axis=0).min() > 10  # it does move


def test_frames_are_real_faces_at_varied_positions() -> None:
    frames = synthetic.make_frames(4)
    assert len(set(frames)) == 4
    detector = create_detector("haar")
    positions = set()
    for data in frames:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (synthetic.FRAME_HEIGHT, synthetic.FRAME_WIDTH, 3)
        boxes = detector.detect(image)
        assert len(boxes) == 1, boxes
        positions.add(boxes[0][:2])
    assert len(positions) > 1


def test_parse_histogram_sums_and_counts() -> None:
    text = (
        "# HELP fer_batch_size Frames per analysed batch\n"
        "# TYPE fer_batch_size histogram\n"
        'fer_batch_size_bucket{le="1.0"} 3.0\n'
        'fer_batch_size_bucket{le="+Inf"} 5.0\n'
        "fer_batch_size_count 5.0\n"
        "fer_batch_size_sum 12.0\n"
        "fer_batch_size_created 1.7e9\n"
        "fer_model_seconds_sum 0.5\n"
    )
    assert report.parse_histogram(text) == (12.0, 5.0)
    assert report.parse_histogram("fer_frames_total 3\n") is None


def test_stage_profile_from_two_scrapes_of_a_real_metrics_page() -> None:
    metrics = Metrics()
    before = metrics.render().decode()
    for _ in range(4):
        metrics.frame_done("ws", 1)
        metrics.observe_stage("receive", 0.001)
        metrics.observe_stage("json", 0.0005)
        metrics.observe_stage("send", 0.002)
    metrics.observe_analysis([{"decode": 2.0, "detect": 10.0, "crop": 0.5, "model": 8.0}] * 4)
    after = metrics.render().decode()
    profile = report.stage_profile(before, after, wall_s=1.0)
    assert profile is not None
    assert {k: profile[k] for k in report.PROFILE_STAGES} == {
        "receive": 1.0,
        "decode": 2.0,
        "detect": 10.0,
        "crop": 0.5,
        "model": 2.0,  # one shared call of 8 ms for the batch of 4
        "json": 0.5,
        "send": 2.0,
    }
    assert 0.0 <= profile["loop_idle_pct"] <= 100.0
    assert "event loop idle" in report.format_profile(4, profile)
    assert report.stage_profile(before, before, wall_s=1.0) is None  # no frame in between
    assert report.stage_profile("", after, wall_s=1.0) is None  # a server without the counters


def test_full_detection_share_from_two_scrapes_of_a_real_metrics_page() -> None:
    metrics = Metrics()
    before = metrics.render().decode()
    metrics.observe_searches([Search.FULL, Search.REGIONS, Search.REGIONS, Search.REGIONS, Search.REGIONS_LOST])
    after = metrics.render().decode()
    counts = report.search_counts(before, after)
    assert counts == {"full": 1, "regions": 3, "regions_lost": 1}
    figures = report.detection_figures(counts)
    assert figures["full_detection_pct"] == 40.0
    line = report.format_detection("2 clients", figures)
    assert line.startswith("detection, 2 clients: full face detection on 40.0% of 5 frames (20.0% scheduled")
    assert "20.0% after a face was not in its region); regions only on 60.0%" in line
    assert report.search_counts("", after) is None  # a server without the counter


def test_format_table_and_percentile() -> None:
    assert report.percentile([], 50) is None
    assert report.percentile([1.0, 2.0, 3.0], 50) == 2.0
    table = report.format_table([{"clients": 2, "frames": 10, "fps": 3.33, "p50_ms": None}])
    assert table.splitlines()[2].split()[:4] == ["2", "10", "3.33", "-"]


def test_only_loopback_urls() -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["--url", "ws://192.0.2.1:8080/ws"])
    assert cli.parse_args(["--url", "ws://127.0.0.1:8080/ws"]).url
    assert cli.parse_args(["--url", "ws://[::1]:8080/ws"]).url


def test_rss_of_this_process() -> None:
    import os

    value = harness.rss_kb(os.getpid())
    assert value is not None and value > 0


# ---------------------------------------------------------------------------- real runs


def test_load_run_prints_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--clients", "2", "--duration", "3", "--warmup", "1", "--frames", "4"]) == 0
    out = capsys.readouterr().out
    row = last_json(out)
    check_row(row, 2)
    assert row["mode"] == "load"
    assert row["mean_batch"] is not None and 1.0 <= row["mean_batch"] <= 16.0  # read from /metrics
    assert "p95 ms" in out  # the human table came before the JSON
    # The per-stage profile, read from the server's own counters over the measured window.
    assert set(row["profile"]) == {*report.PROFILE_STAGES, "loop_idle_pct"}, row
    assert all(row["profile"][stage] >= 0 for stage in report.PROFILE_STAGES)
    assert row["profile"]["detect"] > 0 and row["profile"]["send"] > 0
    assert "profile, 2 clients, server ms per frame: receive" in out
    # How often the server searched the whole frame: the clients' faces move a little, so not always
    # with YuNet; Haar (no YuNet file here) searches whole frames only.
    check_full_detection_share(row["full_detection_pct"], row["server"]["detector"], row)
    assert sum(row["searches"].values()) >= row["frames"], row
    assert (row["searches"].get("regions", 0) > 0) == (row["server"]["detector"] == "yunet"), row
    assert f"detection, 2 clients: full face detection on {row['full_detection_pct']:.1f}% of" in out
    # Where the started server runs its network (its /healthz), so a GPU figure says it was one.
    assert row["server"]["device"] == "CPU" and row["server"]["providers"] == ["CPUExecutionProvider"], row
    assert "server: device CPU, providers ['CPUExecutionProvider']" in out


def test_sweep_rows_against_one_server(capsys: pytest.CaptureFixture[str]) -> None:
    # A sweep: one row per client count against one server; the JSON is the last row + "rows".
    assert cli.main(["--sweep", "1,3", "--duration", "2", "--warmup", "1", "--frames", "4"]) == 0
    row = last_json(capsys.readouterr().out)
    check_row(row, 3)
    assert [r["clients"] for r in row["rows"]] == [1, 3]
    for r in row["rows"]:
        check_row(r, r["clients"])


def test_short_churn_soak_reports_server_rss(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--soak", "--churn", "--clients", "3", "--duration", "4", "--warmup", "1"]
    argv += ["--rss-interval", "2", "--lifetime", "0.5,1.5", "--frames", "4"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    row = last_json(out)
    for key in KEYS:
        assert key in row
    assert row["mode"] == "soak"
    assert row["connects"] > 3, row  # clients came and went
    assert row["frames"] > 0 and row["errors"] == 0, row
    assert row["rss_start_mb"] > 0 and row["rss_end_mb"] > 0, row
    assert len(row["rss_samples_mb"]) >= 2
    assert "server RSS: start" in out


def test_raw_compute_bound(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--raw", "--max-batch", "2", "--duration", "1", "--warmup", "0", "--frames", "8"]) == 0
    out = capsys.readouterr().out
    row = last_json(out)
    for key in KEYS:
        assert key in row
    assert row["mode"] == "raw"
    assert (row["device"], row["providers"]) == ("CPU", ["CPUExecutionProvider"])
    assert row["frames"] > 0 and row["frames"] % 2 == 0
    assert row["mean_batch"] == 2.0
    assert row["errors"] == 0  # every frame decoded and had its face found
    assert row["streams"] == 2, row
    check_full_detection_share(row["full_detection_pct"], row["detector"], row)
    assert "detection, raw, 2 streams: full face detection on" in out


@pytest.mark.soak
def test_soak_30s_with_churn(capsys: pytest.CaptureFixture[str]) -> None:
    """The short soak: 30 s of churning clients; prints start/end server RSS."""
    argv = ["--soak", "--churn", "--clients", "8", "--duration", "30", "--warmup", "2", "--rss-interval", "10"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    row = last_json(out)
    assert row["errors"] == 0 and row["frames"] > 0, row
    print(f"server RSS start {row['rss_start_mb']} MB, end {row['rss_end_mb']} MB, max {row['rss_max_mb']} MB")


def test_detect_every_counts_missed_extra_and_late_faces() -> None:
    scores = (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)

    def frames(*per_frame: list[tuple[int, tuple[int, int, int, int]]]) -> list[AnalysedFrame]:
        return [
            AnalysedFrame(
                i, i / 10, True, tuple(TrackedFace(t, box, scores, scores, "happy") for t, box in faces), None
            )
            for i, faces in enumerate(per_frame)
        ]

    a, b, elsewhere = (0, 0, 50, 50), (200, 0, 50, 50), (400, 300, 50, 50)
    reference = Run(1, frames([(1, a)], [(1, a), (2, b)], [(1, a), (2, b)], [(1, a), (2, b)]), 1.0, 30.0)
    # The second face found two frames late, and a box where nobody is.
    run = Run(5, frames([(1, a)], [(1, a)], [(1, a), (3, elsewhere)], [(1, a), (2, b)]), 0.25, 60.0)
    row = compare(reference, run, fps=10.0)
    assert row == {
        "every": 5,
        "full_pct": 25.0,
        "missed": 2,
        "extra": 1,
        "late_frames": 2,
        "late_s": 0.2,
        "ids": 3,
        "reference_ids": 2,
        "label_pct": 100.0,
        "fps": 60.0,
    }


def test_decode_only_reads_every_frame_as_the_analysis_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The analysis' bound: each file decoded and nothing else, with its frames/s and x real time."""
    frames = [cv2.resize(synthetic.astronaut_bgr(), (320, 240))] * 12
    clip = synthetic.write_video(tmp_path / "clip.mp4", frames, 24.0)
    assert decode.main([str(clip)]) == 0
    row = last_json(capsys.readouterr().out)["rows"][0]
    assert row["file"] == "clip.mp4" and row["frames"] == 12 and row["size"] == "320x240"
    assert row["fps"] > 0 and row["x_real_time"] == pytest.approx(row["fps"] / 24.0, rel=0.01)
    assert decode.main([str(tmp_path / "missing.mp4")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_detect_width_bench_finds_the_small_face_only_where_the_width_allows(
    yunet_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fer_async.bench import detect_width

    argv = ["--frames", "1280x720", "--widths", "320,auto", "--sides", "48,128", "--repeats", "1"]
    assert detect_width.main([*argv, "--detector-model", str(yunet_model)]) == 0
    rows = json.loads(capsys.readouterr().out.splitlines()[-1])["results"]
    assert [(r["width"], r["detected_at"], r["sides_found"]) for r in rows] == [
        (320, 320, [128]),
        ("auto", 427, [48, 128]),
    ]
    assert all(r["detector"] == "yunet" and r["ms_per_detection"] > 0 for r in rows)
