"""training.photos: photos named with their expression, read through the server's path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from training import photos

DATA = Path(__file__).resolve().parents[1] / "data"


def test_the_name_says_the_expression() -> None:
    assert photos.named_expression(Path("sad_crying_child.jpg")) == "sad"
    assert photos.named_expression(Path("Happy-2.PNG")) == "happy"
    assert photos.named_expression(Path("neutral_then_angry.jpg")) == "neutral"  # the first one named
    assert photos.named_expression(Path("portrait.jpg")) is None


def test_reads_each_named_photo_and_counts_what_it_got(
    tmp_path: Path, untrained_export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(DATA / "astronaut_640x480.jpg", tmp_path / "happy_astronaut.jpg")
    shutil.copy(DATA / "coffee_640x480.jpg", tmp_path / "neutral_cup.jpg")  # no face in it
    shutil.copy(DATA / "two_faces_640x480.jpg", tmp_path / "unnamed.jpg")  # names nothing: left out
    rc = photos.main(
        [str(tmp_path), "--detector", "haar", "--cameras", "original,dark35", "--against", str(untrained_export)]
    )
    assert rc == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    shipped, untrained = summary["weights"], summary["against"]
    assert shipped["photos"] == 4 and shipped["faces_found"] == 2  # the astronaut, twice; the cup has no face
    assert shipped["read_as_named"] == 1.0  # she smiles, and the shipped network says so
    assert untrained["faces_found"] == 2 and "happy_astronaut.jpg [dark35]" in out and "no face" in out


def test_a_folder_without_named_photos_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(DATA / "astronaut_640x480.jpg", tmp_path / "portrait.jpg")
    assert photos.main([str(tmp_path)]) == 2
    assert "names an expression" in capsys.readouterr().err
    assert photos.main([str(tmp_path / "missing")]) == 2
