"""training.card: one renderer for the measured tables of a run's card and of an evaluate JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from testsupport import write_tiny_votes

from fer_async.labels import EMOTIONS
from training import card, evaluate
from training.card import LoggedScores, Measured, scores_markdown
from training.metrics import report

REPO = Path(__file__).resolve().parents[2]


def _from_evaluate(path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "training.card", "--from-evaluate", str(path)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_logged_report_renders_as_the_report_itself() -> None:
    rng = np.random.default_rng(4)
    scores = report(rng.integers(0, 7, 500), rng.random((500, 7)))
    logged = LoggedScores.from_dict(json.loads(json.dumps(scores.as_dict())))
    assert scores_markdown(logged) == scores_markdown(scores)
    table = scores_markdown(scores)
    assert f"accuracy **{scores.accuracy:.2%}**, macro-F1 {scores.macro_f1:.3f} (n = 500)" in table
    assert "| class | recall | precision | support |\n|---|---:|---:|---:|" in table
    for name in EMOTIONS:
        row = f"| {name} | {scores.recall[name]:.3f} | {scores.precision[name]:.3f} | {scores.support[name]} |"
        assert row in table
    assert sum(scores.support.values()) == 500


def test_from_evaluate_prints_the_fer2013_ferplus_and_agreed_tables(
    tiny_npz: Path, untrained_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    votes = write_tiny_votes(tmp_path / "votes.npz", n_train=70, n_val=21)
    args = ["--data", str(tiny_npz), "--weights", str(untrained_export), "--out", str(tmp_path / "out")]
    assert evaluate.main([*args, "--votes", str(votes)]) == 0
    output = tmp_path / "evaluate.txt"
    output.write_text(capsys.readouterr().out)  # the whole output: the JSON line is the last one
    line = json.loads(output.read_text().strip().splitlines()[-1])

    done = _from_evaluate(output)
    assert done.returncode == 0, done.stderr
    tables = done.stdout
    fer2013, rest = tables.split(", FER+ majority\n")
    assert fer2013.startswith("## PublicTest (x_val), `") and "flip TTA (FER2013 labels)" in fer2013
    assert f"accuracy **{line['accuracy']:.2%}**" in fer2013 and "(n = 21)" in fer2013
    ferplus = line["ferplus"]
    assert f"accuracy **{ferplus['accuracy']:.2%}**" in rest and f"(n = {ferplus['n']})" in rest
    for name in EMOTIONS:
        assert f"| {name} | {line['recall'][name]:.3f} | {line['precision'][name]:.3f} | 3 |" in fer2013
        row = f"| {name} | {ferplus['recall'][name]:.3f} | {ferplus['precision'][name]:.3f} | "
        assert row + f"{ferplus['support'][name]} |" in rest
    assert sum(ferplus["support"].values()) == ferplus["n"]
    agreed = line["agreed"]
    assert f"FER+ majority: **{agreed['accuracy']:.2%}** (n = {agreed['n']})" in rest


def test_from_evaluate_without_votes_or_support(tmp_path: Path) -> None:
    """An older line (no "support") and one without FER+ votes: the tables they allow."""
    scores = report(np.arange(14) % 7, np.eye(7)[np.arange(14) % 5])
    logged = {k: v for k, v in scores.as_dict().items() if k != "support"}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({**logged, "split": "test", "flip_tta": False}) + "\n")
    done = _from_evaluate(path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("## PrivateTest (x_test) (FER2013 labels)\n\n")
    assert "| class | recall | precision |\n|---|---:|---:|" in done.stdout and "support" not in done.stdout
    assert "FER+" not in done.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "No such file"),
        ("", "is empty"),
        ("accuracy 0.5\n", "Expecting value"),
        ('{"n": 3}', "is not a training.evaluate JSON line"),
    ],
)
def test_from_evaluate_refuses_what_is_no_evaluate_line(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / "line.json"
    if text is not None:
        path.write_text(text)
    done = _from_evaluate(path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("card: error: ") and message in done.stderr and "Traceback" not in done.stderr


def test_the_selection_figure_and_a_note_are_said_where_they_apply() -> None:
    labels = np.arange(21) % 7
    scores = report(labels, np.eye(7)[labels])
    agreed = report(labels[:10], np.eye(7)[labels[:10]])
    selected = Measured("PublicTest (x_val)", scores, scores, agreed, ferplus_selected=True, note="without TTA: 1%")
    text = selected.markdown()
    assert "## PublicTest (x_val) (FER2013 labels)\n" in text and "\n\nwithout TTA: 1%\n" in text
    assert "## PublicTest (x_val), FER+ majority (the selection figure)\n" in text
    assert text.endswith("Faces where FER2013's label is the FER+ majority: **100.00%** (n = 10)\n")
    assert "selection" not in Measured("PublicTest (x_val)", scores, scores).markdown()
    assert card.markdown_table(["a", "b"], [[1, 2]], text_columns=0) == "| a | b |\n|---:|---:|\n| 1 | 2 |"
