"""A run's card: the markdown written beside an export by `training.train` and
`training.distill export`, and its measured tables, which `training.evaluate`'s JSON line gives too.

    python -m training.card --from-evaluate evaluate.json   # the tables of one evaluate JSON line

The measured tables are one figure per label set, each rendered the same way wherever it comes
from (a `training.metrics.Report` of a run, or the JSON line's objects):

* **FER2013 labels**: the dataset's own label of each face;
* **FER+ majority**, where FER+ votes were there: the class most of ten crowd taggers chose
  (`training.ferplus`), with its per-class recall;
* **agreed faces**: the accuracy on the faces whose FER2013 label is the FER+ majority.

`--from-evaluate` reads the last line of the file (so the whole output of `training.evaluate`
or only its `| tail -n 1` will do) and prints these tables, ready for a card's evaluation section.
Exit status 2, with a one-line message on stderr, when the file is missing or is no such line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fer_async.labels import EMOTIONS

SPLIT_NAMES = {"train": "Training", "val": "PublicTest (x_val)", "test": "PrivateTest (x_test)"}


class Accuracy(Protocol):
    @property
    def n(self) -> int: ...

    @property
    def accuracy(self) -> float: ...


class Scores(Accuracy, Protocol):
    """What a table shows: a `training.metrics.Report`, or `LoggedScores` read back from JSON."""

    @property
    def macro_f1(self) -> float: ...

    @property
    def recall(self) -> Mapping[str, float]: ...

    @property
    def precision(self) -> Mapping[str, float]: ...

    @property
    def support(self) -> Mapping[str, int] | None: ...


@dataclass(frozen=True)
class LoggedScores:
    """A Report's figures as `Report.as_dict()` logs them (4 decimals); `support` is None in lines
    logged before it was, and the table then leaves that column out."""

    n: int
    accuracy: float
    macro_f1: float
    recall: Mapping[str, float]
    precision: Mapping[str, float]
    support: Mapping[str, int] | None = None

    @classmethod
    def from_dict(cls, logged: Mapping[str, Any]) -> LoggedScores:
        """Raises KeyError/TypeError/ValueError where `logged` is not such an object."""
        support = logged.get("support")
        return cls(
            n=int(logged["n"]),
            accuracy=float(logged["accuracy"]),
            macro_f1=float(logged["macro_f1"]),
            recall={name: float(logged["recall"][name]) for name in EMOTIONS},
            precision={name: float(logged["precision"][name]) for name in EMOTIONS},
            support=None if support is None else {name: int(support[name]) for name in EMOTIONS},
        )


@dataclass(frozen=True)
class Agreed:
    n: int
    accuracy: float


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], *, text_columns: int = 1) -> str:
    """A markdown table: the first `text_columns` columns left-aligned, the others (numbers) right."""
    align = "|" + "|".join("---" if i < text_columns else "---:" for i in range(len(header))) + "|"
    lines = [" | ".join(header), *(" | ".join(str(cell) for cell in row) for row in rows)]
    return "\n".join([f"| {lines[0]} |", align, *(f"| {line} |" for line in lines[1:])])


def scores_markdown(scores: Scores) -> str:
    """The accuracy line and the per-class table (recall, precision, and support where known)."""
    support = scores.support
    header = ["class", "recall", "precision", *(["support"] if support is not None else [])]
    rows = (
        [
            name,
            f"{scores.recall[name]:.3f}",
            f"{scores.precision[name]:.3f}",
            *([support[name]] if support is not None else []),
        ]
        for name in EMOTIONS
    )
    return f"accuracy **{scores.accuracy:.2%}**, macro-F1 {scores.macro_f1:.3f} (n = {scores.n})\n\n" + markdown_table(
        header, rows
    )


@dataclass(frozen=True)
class Measured:
    """The figures of one split: on FER2013's labels, and where FER+ votes were there, on their
    majority and on the faces where both agree."""

    where: str  # the split and how it was measured, e.g. "PublicTest (x_val)"
    fer2013: Scores
    ferplus: Scores | None = None
    agreed: Accuracy | None = None
    ferplus_selected: bool = False  # the run kept the epoch with the best FER+ majority figure
    note: str = ""  # a line under the FER2013 table

    def markdown(self) -> str:
        note = f"\n\n{self.note}" if self.note else ""
        parts = [f"## {self.where} (FER2013 labels)\n\n{scores_markdown(self.fer2013)}{note}\n"]
        if self.ferplus is not None:
            selection = " (the selection figure)" if self.ferplus_selected else ""
            parts.append(f"## {self.where}, FER+ majority{selection}\n\n{scores_markdown(self.ferplus)}\n")
        if self.agreed is not None:
            parts.append(
                f"Faces where FER2013's label is the FER+ majority: **{self.agreed.accuracy:.2%}** "
                f"(n = {self.agreed.n})\n"
            )
        return "\n".join(parts)


@dataclass(frozen=True)
class RunCard:
    """The card of one exported run. `details` are further "- what: text" lines (after the
    command), `sections` further (heading, body) sections (after the measured tables)."""

    name: str
    network: str
    parameters: int
    macs: int  # per face
    data: str
    command: str
    seed: int
    epochs: str  # how many ran and which one was exported
    wall_seconds: float
    optimizer: str
    measured: Measured
    details: Sequence[tuple[str, str]] = ()
    sections: Sequence[tuple[str, str]] = ()

    def markdown(self) -> str:
        lines = [
            f"network: `{self.network}` ({self.parameters:,} parameters, {self.macs / 1e9:.3f} GMAC per face)",
            f"data: {self.data}",
            f"command: `{self.command}`",
            *(f"{what}: {text}" for what, text in self.details),
            f"seed: {self.seed}; {self.epochs}; wall time: {self.wall_seconds / 60:.1f} min of training",
            f"optimizer: {self.optimizer}",
        ]
        sections = "".join(f"\n## {heading}\n\n{body.rstrip()}\n" for heading, body in self.sections)
        details = "".join(f"- {line}\n" for line in lines)
        return f"# {self.name}\n\n{details}\n{self.measured.markdown()}{sections}"


def network_size(model: Any) -> tuple[int, int]:
    """(parameters, multiply-accumulates per face) of a built Keras network."""
    from training.models import count_macs  # Keras: only where a network is at hand

    return int(model.count_params()), int(count_macs(model))


def measured_from_evaluate(line: Mapping[str, Any]) -> Measured:
    """The tables of one `training.evaluate` JSON line. Raises KeyError/TypeError/ValueError."""
    where = SPLIT_NAMES.get(str(line["split"]), str(line["split"]))
    how = [f"`{line['model_file']}`" if "model_file" in line else "", "flip TTA" if line.get("flip_tta") else ""]
    if "limit" in line:
        how.append(f"{line['limit']} faces of a permutation seeded {line.get('seed')}")
    where = ", ".join([where, *(part for part in how if part)])
    agreed = line.get("agreed")
    return Measured(
        where=where,
        fer2013=LoggedScores.from_dict(line),
        ferplus=LoggedScores.from_dict(line["ferplus"]) if "ferplus" in line else None,
        agreed=Agreed(int(agreed["n"]), float(agreed["accuracy"])) if agreed else None,
    )


def read_evaluate_line(path: Path) -> Mapping[str, Any]:
    """The JSON object on the last non-empty line of `path` ("-": stdin). Raises OSError/ValueError."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} is empty")
    line = json.loads(lines[-1])
    if not isinstance(line, dict):
        raise ValueError(f"{path}: the last line is not a JSON object")
    return line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.card", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--from-evaluate",
        type=Path,
        required=True,
        metavar="FILE",
        help="a file ending with training.evaluate's JSON line ('-': stdin): print its tables as markdown",
    )
    args = p.parse_args(argv)
    try:
        measured = measured_from_evaluate(read_evaluate_line(args.from_evaluate))
    except (OSError, ValueError) as e:
        print(f"card: error: {e}", file=sys.stderr)
        return 2
    except (KeyError, TypeError) as e:
        print(f"card: error: {args.from_evaluate} is not a training.evaluate JSON line ({e!r})", file=sys.stderr)
        return 2
    print(measured.markdown(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
