"""fer_async.analyze: rows of real clips through the real Analyzer, model and OpenCV; every bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from analyze_clips import (
    CLIP_FPS,
    CLIP_SIZE,
    FACE_REGION,
    PORTRAIT_FACE_REGION,
    SMALL_FACE_AT,
    SMALL_FACE_SIDE,
    empty_clip,
    face_clip,
    no_face_clip,
    not_a_video,
    portrait_clip,
    small_face_clip,
    truncated_clip,
)
from testsupport import SERVED_FILE, SERVED_PRECISION

from fer_async.analyze import (
    Ending,
    FileAnalysis,
    IncompleteVideoWarning,
    InputError,
    analyze_video,
    columns,
    load_analyzer,
    open_source,
)
from fer_async.analyze import source as source_module
from fer_async.analyze.__main__ import main
from fer_async.analyze.core import FileSummary
from fer_async.analyze.outputs import plot_timeline
from fer_async.analyze.source import FrameReader
from fer_async.analyze.stages import analyzer_stages
from fer_async.config import Settings
from fer_async.detector import create_detector
from fer_async.labels import EMOTIONS
from fer_async.recognition import Analyzer
from fer_async.schedule import DETECT_EVERY
from fer_async.synthetic import write_video
from fer_async.tracker import iou, tracker_for

SHARED_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"


@pytest.fixture(scope="module")
def analyzer(real_model: Any) -> Iterator[Analyzer]:
    with Analyzer(real_model, create_detector("haar", None)) as a:
        yield a


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    return {
        "face": face_clip(d / "face.mp4"),
        "no_face": no_face_clip(d / "coffee.mp4"),
        "truncated": truncated_clip(d / "cut.avi"),
        "empty": empty_clip(d / "empty.mp4"),
        "text": not_a_video(d / "text.mp4"),
    }


def shared_clip(name: str) -> Path:
    path = SHARED_VIDEOS / name
    if not path.is_file():
        pytest.skip(f"real clip not found at {path}")
    return path


def test_rows_one_per_face_per_frame_with_every_column(analyzer: Analyzer, clips: dict[str, Path]) -> None:
    rows = list(analyze_video(clips["face"], analyzer=analyzer))
    # Every frame, in order; Haar finds a spurious second "face" in the odd frame of this photo.
    assert sorted({r["frame"] for r in rows}) == list(range(12))
    assert [r["frame"] for r in rows] == sorted(r["frame"] for r in rows)
    main_face = [r for r in rows if r["face"] == 1]
    assert [r["frame"] for r in main_face] == list(range(12))  # one track all along
    for row in rows:
        assert list(row) == list(columns(smoothed=True))
        assert row["file"] == str(clips["face"])
        assert row["time_s"] == pytest.approx(row["frame"] / CLIP_FPS, abs=1e-4)
        assert row["emotion"] in EMOTIONS
        assert sum(row[name] for name in EMOTIONS) == pytest.approx(1.0, abs=2e-3)
        assert sum(row["smoothed_" + name] for name in EMOTIONS) == pytest.approx(1.0, abs=2e-3)
    # Boxes are in the file's own pixels (960 wide), also when the frames were shrunk to 640 first
    # (as the MJPEG stream's are), and the face is the same either way.
    first = main_face[0]
    assert iou((first["x"], first["y"], first["w"], first["h"]), FACE_REGION) > 0.6
    assert first["x"] + first["w"] <= CLIP_SIZE[0]
    shrunk = next(r for r in analyze_video(clips["face"], analyzer=analyzer, max_width=640) if r["face"] == 1)
    assert iou(tuple(shrunk[k] for k in "xywh"), tuple(first[k] for k in "xywh")) > 0.8
    assert shrunk["emotion"] == first["emotion"]


def test_smoothing_and_margin_off_give_raw_scores_and_their_label(analyzer: Analyzer, clips: dict[str, Path]) -> None:
    rows = list(analyze_video(clips["face"], analyzer=analyzer, smoothing_ms=0, label_margin=0, every=5))
    assert sorted({r["frame"] for r in rows}) == [0, 5, 10]
    assert list(rows[0]) == list(columns(smoothed=False))
    for row in rows:
        assert row["emotion"] == max(EMOTIONS, key=lambda name: row[name])


def test_frames_without_faces_still_get_a_row(analyzer: Analyzer, clips: dict[str, Path]) -> None:
    rows = list(analyze_video(clips["no_face"], analyzer=analyzer))
    assert [r["frame"] for r in rows] == list(range(6))
    assert all(r["face"] is None and r["emotion"] is None and r["happy"] is None for r in rows)


def test_an_image_is_one_frame(analyzer: Analyzer) -> None:
    rows = list(analyze_video(Path(__file__).parent / "data" / "two_faces_640x480.jpg", analyzer=analyzer))
    assert [(r["frame"], r["time_s"], r["face"]) for r in rows] == [(0, 0.0, 1), (0, 0.0, 2)]


@pytest.mark.parametrize(
    ("clip", "message"),
    [
        ("missing", "no such file"),
        ("text", "not a video"),
        ("empty", "no frames, truncated or corrupt"),
    ],
)
def test_bad_inputs_raise_one_line(analyzer: Analyzer, clips: dict[str, Path], clip: str, message: str) -> None:
    path = clips.get(clip, clips["face"].with_name("missing.mp4"))
    with pytest.raises(InputError, match=message) as info:
        next(analyze_video(path, analyzer=analyzer))
    assert "\n" not in str(info.value)


def test_frames_over_8k_are_refused_from_the_header(analyzer: Analyzer, tmp_path: Path) -> None:
    # One grey MJPEG frame of 7700x4400: a 34 Mpx frame in a file of a few hundred KB.
    path = write_video(tmp_path / "huge.avi", [np.full((4400, 7700, 3), 128, np.uint8)], 10)
    assert path.stat().st_size < 2_000_000
    with pytest.raises(InputError, match=r"7700x4400 frames, over the 33.2 Mpx .*scale the video down first"):
        next(analyze_video(path, analyzer=analyzer))


def test_a_frame_larger_than_the_header_said_ends_the_file_as_corrupt(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header passed; a frame then comes out over the limit (a file that lies): the file is cut short there."""
    info = open_source(clips["face"])
    monkeypatch.setattr(source_module, "MAX_VIDEO_PIXELS", info.width * info.height - 1)
    reader = FrameReader(info)
    assert list(reader.frames(lambda index: True)) == []
    assert reader.decode_failed and reader.frames_read == 0


def test_a_truncated_video_yields_what_decodes_then_warns(analyzer: Analyzer, clips: dict[str, Path]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = list(analyze_video(clips["truncated"], analyzer=analyzer))
    assert 0 < len(rows) < 20
    assert [r["frame"] for r in rows][:3] == [0, 1, 2]
    (warning,) = [w for w in caught if issubclass(w.category, IncompleteVideoWarning)]
    assert f"stopped at frame {rows[-1]['frame'] + 1} of the 20" in str(warning.message)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert reader.fieldnames is not None
    return rows


def test_cli_writes_csv_annotated_video_and_plot(
    tmp_path: Path, clips: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    outputs = ["--out", f"{out}/", "--annotate", f"{out}/{{stem}}.mp4", "--plot", f"{out}/{{stem}}.png"]
    status = main([str(clips["face"]), str(clips["no_face"]), *outputs])
    assert status == 0
    face_rows = read_csv(out / "face.csv")
    assert [r["frame"] for r in face_rows if r["face"] == "1"] == [str(i) for i in range(12)]
    coffee_rows = read_csv(out / "coffee.csv")
    assert len(coffee_rows) == 6 and {r["face"] for r in coffee_rows} == {""}
    capture = cv2.VideoCapture(str(out / "face.mp4"))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 12
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.shape == (CLIP_SIZE[1], CLIP_SIZE[0], 3)
    assert (out / "face.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in out.iterdir()) == [
        "coffee.csv",
        "coffee.mp4",
        "coffee.png",
        "face.csv",
        "face.mp4",
        "face.png",
    ]
    report = capsys.readouterr().out
    assert "face.mp4: 12 frames read, 12 analysed (12 with faces), " in report
    assert "  face 1: 0.00-1.10 s, 12 frames: " in report
    # YuNet searches whole frames on frames 0, N, 2N ... only (--detect-every N); Haar on every frame.
    share = f"{-(-12 // DETECT_EVERY) / 12:.0%}" if "detector: yunet" in report else "100%"
    assert f"; full face detection on {share} of the analysed frames" in report


def test_cli_jsonl_and_every(tmp_path: Path, clips: dict[str, Path]) -> None:
    out = tmp_path / "face.jsonl"
    assert main([str(clips["face"]), "--out", str(out), "--every", "4", "--smoothing-ms", "0"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted({r["frame"] for r in rows}) == [0, 4, 8]
    assert list(rows[0]) == list(columns(smoothed=False))


def test_cli_bad_inputs_each_get_one_line_and_no_output(
    tmp_path: Path, clips: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    inputs = [tmp_path / "missing.mp4", clips["text"], clips["empty"], clips["truncated"], clips["no_face"]]
    assert main([*map(str, inputs), "--out", f"{out}/"]) == 1
    errors = capsys.readouterr().err.splitlines()
    errors = [line for line in errors if line.startswith("analyze: error:")]
    assert len(errors) == 4, errors
    assert "missing.mp4: no such file" in errors[0]
    assert "text.mp4: not a video" in errors[1]
    assert "empty.mp4: a video container OpenCV cannot open" in errors[2]
    assert "cut.avi: decoding stopped at frame" in errors[3] and "truncated or corrupt" in errors[3]
    # Only the good file has a complete output; the cut one says it is incomplete.
    assert sorted(p.name for p in out.iterdir()) == ["coffee.csv", "cut.incomplete.csv"]
    assert 0 < len(read_csv(out / "cut.incomplete.csv")) < 20


def test_cli_refuses_one_output_for_several_inputs(tmp_path: Path, clips: dict[str, Path]) -> None:
    assert main([str(clips["face"]), str(clips["no_face"]), "--out", str(tmp_path / "x.csv")]) == 2
    assert main([str(clips["face"]), "--out", str(tmp_path / "x.txt")]) == 2
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_plot_without_matplotlib_before_analysing(
    tmp_path: Path, clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: its import fails
    out = tmp_path / "out"
    assert main([str(clips["face"]), "--out", f"{out}/", "--plot", f"{out}/"]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("duration_s", [0.04, 4.0, 0.0])
def test_a_plot_without_faces_says_so_in_its_middle_above_its_time_axis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, duration_s: float
) -> None:
    import matplotlib.pyplot as plt

    figures: list[Any] = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to measure it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Tight layout not applied" when the text left the canvas
        plot_timeline(FileSummary(keep_timeline=True), "clip.mp4", tmp_path / "t.png", duration_s=duration_s)
    [figure] = figures
    renderer = figure.canvas.get_renderer()
    [ax] = figure.axes
    [text] = ax.texts
    panel, note = ax.get_window_extent(renderer), text.get_window_extent(renderer)
    assert panel.x0 < note.x0 and note.x1 < panel.x1 and panel.y0 < note.y0 and note.y1 < panel.y1
    assert abs((note.x0 + note.x1) / 2 - (panel.x0 + panel.x1) / 2) < 1
    label = ax.xaxis.label
    assert label.get_text() == "time (s)"
    box = label.get_window_extent(renderer)
    assert figure.bbox.x0 <= box.x0 and box.x1 <= figure.bbox.x1 and figure.bbox.y0 <= box.y0
    monkeypatch.undo()
    plt.close(figure)


def test_real_clip_single_face(analyzer: Analyzer) -> None:
    """single_face.mp4: one man, neutral, a broad smile around frames 30-55 (SOURCES.md)."""
    rows = list(analyze_video(shared_clip("single_face.mp4"), analyzer=analyzer))
    assert [r["frame"] for r in rows] == list(range(72))
    assert {r["face"] for r in rows} == {1}
    labels = [r["emotion"] for r in rows]
    assert labels[:15].count("neutral") > 10
    assert labels[40:56].count("happy") > 12


def test_real_clip_no_face_mp4_decodes_to_its_end_and_is_complete(
    analyzer: Analyzer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """no_face.mp4 decodes 95 of the 98 frames its header estimates: 0.13 s short, a normal MP4."""
    clip = shared_clip("no_face.mp4")
    with warnings.catch_warnings():
        warnings.simplefilter("error", IncompleteVideoWarning)
        rows = list(analyze_video(clip, analyzer=analyzer, every=5))
    assert [r["frame"] for r in rows] == list(range(0, 95, 5))
    assert main([str(clip), "--out", f"{tmp_path}/", "--every", "5"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no_face.csv"]
    assert "analyze: error" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("announced", "ending"),
    [(12, Ending.DONE), (13, Ending.DONE), (16, Ending.DONE), (17, Ending.CUT_SHORT), (40, Ending.CUT_SHORT)],
)
def test_a_shortfall_is_cut_short_only_when_large_in_time_and_share(
    analyzer: Analyzer, clips: dict[str, Path], announced: int, ending: Ending
) -> None:
    """12 frames at 10 fps decode; a header announcing more is an estimate until 0.5 s (and 2 %) are missing."""
    info = dataclasses.replace(open_source(clips["face"]), frame_count=announced)
    analysis = FileAnalysis(info, analyzer_stages(analyzer), tracker_for(Settings()), every=4)
    assert analysis.run(lambda frame: None) is ending
    assert analysis.frames_read == 12


def test_a_truncated_file_is_cut_short_through_the_api_and_the_cli(
    analyzer: Analyzer, clips: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = open_source(clips["truncated"])
    analysis = FileAnalysis(info, analyzer_stages(analyzer), tracker_for(Settings()))
    assert analysis.run(lambda frame: None) is Ending.CUT_SHORT
    assert 0 < analysis.frames_read <= 15 and info.frame_count == 20  # half the bytes: about half the frames
    assert main([str(clips["truncated"]), "--out", f"{tmp_path}/"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.incomplete.csv"]
    assert "truncated or corrupt; the rows up to there are kept" in capsys.readouterr().err


def test_real_mov_clip_has_a_row_per_frame(analyzer: Analyzer) -> None:
    rows = list(analyze_video(shared_clip("face_noface.mov"), analyzer=analyzer, every=4))
    frames = sorted({r["frame"] for r in rows})
    assert frames == list(range(0, 169, 4))
    assert any(r["face"] is not None for r in rows if r["frame"] < 60)
    assert np.mean([r["face"] is None for r in rows if r["frame"] > 120]) > 0.8


def test_the_cli_imports_neither_the_web_server_nor_tensorflow_before_it_needs_it() -> None:
    """`--help`, bad inputs and output checks answer without TensorFlow's seconds of import."""
    code = (
        "import sys, fer_async.analyze.__main__; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'aiohttp', 'tensorflow', 'keras'}))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_rows_to_stdout_and_the_summary_to_stderr(
    clips: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(clips["no_face"]), "--out", "-"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == ",".join(columns(smoothed=True))
    assert [line.split(",")[1] for line in lines[1:]] == [str(i) for i in range(6)]
    assert "coffee.mp4: 6 frames read, 6 analysed (0 with faces), 6 rows, 0 tracks" in captured.err


FORMULA_STEMS = ("=1+1", "+1+1", "-2+3", "@SUM(1)", "\t=1", "\r=1")


def test_cli_csv_neutralises_formula_names_and_jsonl_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files named like formulas, given as a user types them (relative names): the file column of the CSV."""
    monkeypatch.chdir(tmp_path)
    clip = face_clip(tmp_path / "face.mp4", frames=2)
    names = [f"{stem}.mp4" for stem in FORMULA_STEMS]
    for name in names:
        (tmp_path / name).write_bytes(clip.read_bytes())
    assert main(["--out", "out/", "--", *names]) == 0  # "--": "-2+3.mp4" is a file, not an option
    for stem, name in zip(FORMULA_STEMS, names, strict=True):
        rows = read_csv(tmp_path / "out" / f"{stem}.csv")
        assert rows and {r["file"] for r in rows} == {"'" + name.replace("\r", " ")}, stem
        assert {r["emotion"] for r in rows} <= set(EMOTIONS)
    assert main(["--out", "exact.jsonl", "--", names[0]]) == 0
    assert {json.loads(line)["file"] for line in (tmp_path / "exact.jsonl").read_text().splitlines()} == {names[0]}


def test_cli_builds_the_model_as_the_server_does(clips: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """--runtime and --model-precision reach the model (the CLI once dropped --runtime)."""
    assert main([str(clips["no_face"]), "--runtime", "keras", "--model-precision", "fp32", "--every", "3"]) == 0
    assert "model: fernet.json (keras, fp32)" in capsys.readouterr().out
    assert main([str(clips["no_face"]), "--runtime", "onnx", "--every", "3"]) == 0
    assert f"model: {SERVED_FILE} (onnx, {SERVED_PRECISION})" in capsys.readouterr().out
    with pytest.raises(SystemExit) as usage:  # the server's own check of its option
        main([str(clips["no_face"]), "--smoothing-ms", "-1"])
    assert usage.value.code == 2 and "--smoothing-ms must be 0..10000" in capsys.readouterr().err


def test_a_phone_portrait_video_is_analysed_upright(analyzer: Analyzer, tmp_path: Path) -> None:
    # Phones store portrait video sideways with the rotation in the header: the face is found, and
    # boxes are in the upright 720x960 frame, as the viewer sees the video.
    rows = list(analyze_video(portrait_clip(tmp_path / "portrait.mp4"), analyzer=analyzer))
    faces = [r for r in rows if r["face"] == 1]
    assert [r["frame"] for r in faces] == list(range(6))
    for r in faces:
        assert iou((r["x"], r["y"], r["w"], r["h"]), PORTRAIT_FACE_REGION) > 0.5, r
    # Without the rotation the same frames hold a face on its side, which no detector finds.
    sideways = portrait_clip(tmp_path / "sideways.mp4", rotation_in_header=False)
    assert all(r["face"] is None for r in analyze_video(sideways, analyzer=analyzer))


def test_small_faces_in_large_frames_are_found_at_the_automatic_detection_width(
    tmp_path: Path, yunet_model: Path
) -> None:
    # A wide 1080p shot with a 56 px face: 'auto' detects at 640 px (a third of 1920), where the
    # face is 19 px, and finds it on every frame, where it is; at 320 it is 9 px and missed.
    clip = small_face_clip(tmp_path / "wide.mp4")
    expected = (SMALL_FACE_AT[0] + 89, SMALL_FACE_AT[1] + 32, SMALL_FACE_SIDE, SMALL_FACE_SIDE)
    found = {}
    for width in ("auto", "320"):
        out = tmp_path / f"wide-{width}.csv"
        args = [str(clip), "--detector-model", str(yunet_model), "--out", str(out)]
        assert main(args if width == "auto" else [*args, "--detect-width", width]) == 0
        with out.open() as f:
            found[width] = [row for row in csv.DictReader(f) if row["face"]]
    assert found["320"] == []
    assert [row["frame"] for row in found["auto"]] == ["0", "1", "2", "3"]
    for row in found["auto"]:
        box = (int(row["x"]), int(row["y"]), int(row["w"]), int(row["h"]))
        assert iou(box, expected) > 0.6, row


def test_load_analyzer_takes_the_detection_width() -> None:
    with load_analyzer(detector="haar", detect_width=640) as analyzer:
        assert getattr(analyzer.detector, "detect_width", None) == 640
    with pytest.raises(ValueError, match="--detect-width"):
        load_analyzer(detector="haar", detect_width=10)
