"""--ray: files, and long files in chunks, as tasks of a real local Ray give the plain run's rows byte for byte."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from analyze_clips import face_clip, no_face_clip, not_a_video, truncated_clip

# A Ray of this machine alone, on the loopback address, without Ray's usage report; set before Ray is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'fer_async[cluster]')")

from fer_async.analyze import IncompleteVideoWarning, analyze_video  # noqa: E402
from fer_async.analyze import distributed as distributed_module  # noqa: E402
from fer_async.analyze.__main__ import main  # noqa: E402
from fer_async.analyze.chunks import chunk_unit  # noqa: E402
from fer_async.analyze.core import frame_rows  # noqa: E402
from fer_async.analyze.distributed import RayRun  # noqa: E402
from fer_async.analyze.source import InputError, SourceInfo, frame_times, open_source  # noqa: E402
from fer_async.config import Settings  # noqa: E402
from fer_async.demo import write_clip  # noqa: E402
from fer_async.loading import load_detector  # noqa: E402
from fer_async.schedule import DEFAULT_CADENCE, Cadence  # noqa: E402
from fer_async.synthetic import astronaut_bgr, compose_frame, write_video  # noqa: E402
from fer_async.tracker import tracker_for  # noqa: E402

SHARED_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
CHUNK = "16"  # frames per task: several chunks per test clip (the batch of 16 frames is the unit)
# --detect-every of the runs with chunks of 16 frames: a period that divides the batch keeps that
# unit, and regions are searched between full detections across every chunk boundary.
# test_the_default_period_starts_chunks_at_its_multiples runs the default (5: chunks of 80 frames).
PERIOD = 4
RAY_CPUS = 2
RAY_STORE_BYTES = 200 * 1024 * 1024


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One real local Ray for the module, small: the CLI and the API use a Ray this process joined."""
    ray.init(
        address="local",
        num_cpus=RAY_CPUS,
        object_store_memory=RAY_STORE_BYTES,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Clips from tests/data's photos: one face panning, two faces (the demo), none, a truncated one, a text file."""
    d = tmp_path_factory.mktemp("ray-clips")
    write_clip(d / "two_faces.mp4", seconds=5, fps=15)  # 75 frames, two faces moving: two tracks to stitch
    return {
        "face": face_clip(d / "face.mp4", frames=70),
        "two_faces": d / "two_faces.mp4",
        "no_face": no_face_clip(d / "coffee.mp4", frames=20),
        "truncated": truncated_clip(d / "cut.avi", frames=60),
        "text": not_a_video(d / "text.mp4"),
    }


def outputs(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def both_runs(tmp_path: Path, inputs: list[Path], out: str, *extra: str) -> tuple[tuple[int, Path], tuple[int, Path]]:
    """(status, output directory) of the plain run and of the --ray run with small chunks."""
    runs = []
    for name, options in (("plain", ["--chunk-frames", CHUNK]), ("ray", ["--ray", "--chunk-frames", CHUNK])):
        target = tmp_path / name
        status = main([*map(str, inputs), "--out", str(target) + out, "--detect-every", str(PERIOD), *extra, *options])
        runs.append((status, target))
    return runs[0], runs[1]


def test_ray_rows_are_the_plain_runs_byte_for_byte(
    local_ray: None, tmp_path: Path, clips: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = [clips[name] for name in ("face", "two_faces", "no_face", "truncated", "text")]
    (plain_status, plain), (ray_status, ray_dir) = both_runs(tmp_path, inputs, "/")
    report = capsys.readouterr()
    # Same contract as the plain run: the text file and the truncated one fail, the others are written.
    assert plain_status == ray_status == 1
    assert report.err.count("text.mp4: not a video") == 2
    files = outputs(plain)
    assert sorted(files) == ["coffee.csv", "cut.incomplete.csv", "face.csv", "two_faces.csv"]
    assert outputs(ray_dir) == files
    two_faces = files["two_faces.csv"].decode().splitlines()
    assert {line.split(",")[3] for line in two_faces[1:]} == {"1", "2"}  # two tracks, stitched over 5 chunks
    # 70, 75 and 20 frames in chunks of 16: 5 + 5 + 2; the truncated file's packets (31 of the 60
    # frames its header announces) make 2.
    assert "ray: 14 chunks on 1 node, 0 decoded from their file's start" in report.out


def test_ray_jsonl_every_and_raw_scores(local_ray: None, tmp_path: Path, clips: dict[str, Path]) -> None:
    inputs = [clips["face"], clips["two_faces"]]
    extra = ("--every", "3", "--smoothing-ms", "0", "--label-margin", "0")
    (plain_status, plain), (ray_status, ray_dir) = both_runs(tmp_path, inputs, "/{stem}.jsonl", *extra)
    assert plain_status == ray_status == 0
    assert outputs(ray_dir) == outputs(plain)
    # A row per face: Haar (no YuNet file here) may see a second face in a frame.
    frames = sorted({json.loads(line)["frame"] for line in (plain / "face.jsonl").read_text().splitlines()})
    assert frames == list(range(0, 70, 3))
    assert chunk_unit(3, 16, Cadence(PERIOD)) == 48  # 16 analysed frames per batch: chunks of 48 frames here


def test_the_default_period_starts_chunks_at_its_multiples(
    local_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--detect-every 5, the default, with batches of 16 frames: chunks start at multiples of 80 frames."""
    assert Settings().detect_every == 5
    assert (chunk_unit(1, 16, DEFAULT_CADENCE), chunk_unit(3, 16, DEFAULT_CADENCE)) == (80, 240)
    # A batch span of 15 frames (the buffer's cap, say): even counts for the views only with --alternate-flip.
    assert (chunk_unit(1, 15, Cadence(5, True)), chunk_unit(1, 15, Cadence(5, False))) == (30, 15)
    clip = tmp_path / "two_faces.mp4"
    write_clip(clip, seconds=12, fps=15)  # 180 frames: chunks at frames 0, 80 and 160
    written = {}
    for name, options in (("plain", ["--chunk-frames", CHUNK]), ("ray", ["--ray", "--chunk-frames", CHUNK])):
        target = tmp_path / f"{name}.csv"
        assert main([str(clip), "--out", str(target), *options]) == 0
        written[name] = target.read_bytes()
    report = capsys.readouterr().out
    assert written["ray"] == written["plain"]
    assert "ray: 3 chunks on 1 node, 0 decoded from their file's start" in report
    # Both runs searched the whole frame on the same frames (YuNet: 0, 5, 10, ...; Haar: all).
    shares = re.findall(r"full face detection on (\d+)% of the analysed frames", report)
    assert len(shares) == 2 and shares[0] == shares[1], report
    if "detector: yunet" in report:
        assert int(shares[0]) < 100


def test_faces_kept_through_dark_full_detections_and_chunks_agree(
    local_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A face the whole-frame search misses is kept by its region (`FramePlan.recheck`), which
    depends on the frame before: the plain run starts afresh where chunks start, and agrees."""
    bright = compose_frame(astronaut_bgr(), 60, 20, side=160, seed=0)
    dark = (bright.astype(np.float32) * 0.1).astype(np.uint8)
    # Bright only on full detections 0, 20 and 36; chunks (16 frames, --detect-every 4) start at 16 and 32.
    frames = [bright if i in (0, 20, 36) else dark for i in range(48)]
    clip = write_video(tmp_path / "dimmed.avi", frames, 10.0)
    written = {}
    for name, options in (("plain", ["--chunk-frames", CHUNK]), ("ray", ["--ray", "--chunk-frames", CHUNK])):
        target = tmp_path / f"{name}.csv"
        assert main([str(clip), "--out", str(target), "--detect-every", str(PERIOD), *options]) == 0
        written[name] = target.read_bytes()
    report = capsys.readouterr().out
    assert written["ray"] == written["plain"]
    if "detector: yunet" in report:
        rows = [line.split(",") for line in written["plain"].decode().splitlines()[1:]]
        with_face = {int(row[1]) for row in rows if row[3]}
        # From each bright frame to the next start of a chunk, where the dark full detection finds nobody.
        assert with_face == set(range(16)) | set(range(20, 32)) | set(range(36, 48))
        # With the default chunks (1040 frames here) the face is kept on every frame.
        target = tmp_path / "default.csv"
        assert main([str(clip), "--out", str(target), "--detect-every", str(PERIOD)]) == 0
        assert {int(row.split(",")[1]) for row in target.read_text().splitlines()[1:] if row.split(",")[3]} == set(
            range(48)
        )


def test_real_clips_and_variable_frame_rates_by_timestamp(
    local_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not SHARED_VIDEOS.is_dir():
        pytest.skip(f"real clips not found at {SHARED_VIDEOS}")
    # OpenCV's seek by frame number misses frames of the two .mov clips (their rate varies);
    # the chunks find their first frame by its timestamp from the packets instead. no_face.mp4
    # has 98 packets and 95 frames: its last chunk starts where no frame decodes.
    clips = [SHARED_VIDEOS / name for name in ("face_noface.mov", "noface_face.mov", "no_face.mp4")]
    (plain_status, plain), (ray_status, ray_dir) = both_runs(tmp_path, clips, "/")
    assert plain_status == ray_status == 0
    assert outputs(ray_dir) == outputs(plain)
    assert "0 decoded from their file's start" in capsys.readouterr().out


def test_a_chunk_that_lands_on_the_wrong_frame_is_decoded_from_the_start(
    local_ray: None, clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check, not the seek, makes the rows right: timestamps 3 frames off put every chunk on a wrong frame."""
    info = open_source(clips["two_faces"])
    times = frame_times(info.path)
    assert times is not None and len(times) == 75
    monkeypatch.setattr(distributed_module, "frame_times", lambda path: times[3:] + times[:3])
    settings = Settings(detect_every=PERIOD).replace(detector=load_detector(Settings())[1])
    run = RayRun([info], settings, max_width=640, chunk_frames=16)
    try:
        analysis = run.analysis(0, tracker_for(settings))
        rows = [row for frame in analysis for row in frame_rows(str(info.path), frame, analysis.smoothed)]
    finally:
        run.close()
    assert run.board.from_start == 4  # every chunk after the first, run again from the file's start
    plain = analyze_video(info.path, max_width=640, detect_every=PERIOD, options={"detector": settings.detector})
    assert rows == list(plain)


def test_frames_read_counts_the_frames_handed_out_as_the_plain_run_does(
    local_ray: None, clips: dict[str, Path]
) -> None:
    """What the CLI's summary and its "interrupted at frame N" say when a run stops mid-chunk."""
    info = open_source(clips["face"])
    settings = Settings(detect_every=PERIOD).replace(detector=load_detector(Settings())[1])
    run = RayRun([info], settings, max_width=640, chunk_frames=16)
    try:
        analysis = run.analysis(0, tracker_for(settings))
        for frame in analysis:  # every frame is analysed (every=1), as in the plain run
            assert analysis.frames_read == frame.index + 1 == analysis.frames_analysed
            if frame.index == 20:  # in the second chunk
                break
    finally:
        run.close()
    assert analysis.frames_read == 21


def test_the_api_gives_the_plain_rows_exactly_and_a_file_missing_on_a_node_fails_alone(
    local_ray: None, clips: dict[str, Path], tmp_path: Path
) -> None:
    path = clips["two_faces"]
    plain = list(analyze_video(path, detect_every=PERIOD))
    assert (
        list(analyze_video(path, detect_every=PERIOD, ray="local", chunk_frames=16)) == plain
    )  # the floats themselves
    # A file this machine sees and a node does not (no shared filesystem there) fails with that
    # reason; the files after it are analysed all the same.
    gone = SourceInfo(tmp_path / "only_here.mp4", "video", 15.0, 75, 640, 480)
    settings = Settings(detect_every=PERIOD).replace(detector=load_detector(Settings())[1])
    run = RayRun([gone, open_source(path)], settings, max_width=None, chunk_frames=16)
    try:
        with pytest.raises(InputError, match=r"only_here\.mp4: not found on node .*: every node needs the inputs"):
            list(run.analysis(0, tracker_for(settings)))
        analysis = run.analysis(1, tracker_for(settings))
        rows = [row for frame in analysis for row in frame_rows(str(path), frame, analysis.smoothed)]
    finally:
        run.close()
    assert rows == plain


def test_chunks_run_a_window_at_a_time_and_none_is_cancelled(
    local_ray: None, clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray 2.60's driver aborts when a cancel races with the task's reply, so chunks no longer wanted
    (the truncated file's header promises 4, its packets make 2) leave the queue or finish unread."""

    def no_cancel(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("ray.cancel was called")

    monkeypatch.setattr(ray, "cancel", no_cancel)
    settings = Settings(detect_every=PERIOD).replace(detector=load_detector(Settings())[1])
    inputs = [clips["truncated"], clips["two_faces"]]
    run = RayRun([open_source(path) for path in inputs], settings, max_width=None, chunk_frames=16, window=2)
    try:
        rows = []
        for file, path in enumerate(inputs):
            analysis = run.analysis(file, tracker_for(settings))
            rows.append([row for frame in analysis for row in frame_rows(str(path), frame, analysis.smoothed)])
    finally:
        run.close()
    assert run.board.most_running == 2
    with pytest.warns(IncompleteVideoWarning):
        truncated = list(analyze_video(inputs[0], detect_every=PERIOD))
    assert rows == [truncated, list(analyze_video(inputs[1], detect_every=PERIOD))]


def test_ray_option_checks(capsys: pytest.CaptureFixture[str], clips: dict[str, Path]) -> None:
    for argv, message in (
        ([str(clips["face"]), "--chunk-frames", "0"], "--chunk-frames must be at least 1"),
        (["--ray", str(clips["face"]), str(clips["no_face"])], "--ray takes an address, not an input"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_analysis_keeps_its_images_with_ray(local_ray: None, tmp_path: Path, clips: dict[str, Path]) -> None:
    """--annotate with --ray decodes the frames once more on this machine: the same annotated video."""
    sizes: dict[str, Any] = {}
    for name, options in (("plain", ["--chunk-frames", CHUNK]), ("ray", ["--ray", "--chunk-frames", CHUNK])):
        target = tmp_path / f"{name}.mp4"
        assert main([str(clips["two_faces"]), "--annotate", str(target), "--detect-every", str(PERIOD), *options]) == 0
        sizes[name] = target.read_bytes()
    assert sizes["ray"] == sizes["plain"]
