"""The documentation's shape: a short README, links that lead somewhere, CI running the README's command.

The options table in docs/options.md is checked against the code in tests/server/test_config.py.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
CARD = REPO / "weights" / "fernet.md"
README_MAX_LINES = 400
CARD_MAX_LINES = 250
# Mitchell et al. 2019 and the Hugging Face layout, in the words of the card's headings.
CARD_SECTIONS = (
    "## Model details",
    "## Intended use",
    "## Out-of-scope uses",
    "## Training data",
    "## Evaluation",
    "## Cost",
    "## Limitations and biases",
    "## Ethical considerations",
)

_FENCE = re.compile(r"^(```|~~~)")
_CODE_SPAN = re.compile(r"`+[^`]*`+")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _pages() -> list[Path]:
    return [README, CARD, *sorted(DOCS.glob("*.md"))]


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def _code_lines(text: str) -> list[str]:
    """The lines inside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
        elif fenced:
            lines.append(line)
    return lines


def _links(text: str) -> list[str]:
    targets = []
    for line in _prose_lines(text):
        # A code span may hold "](": blank it out, but keep link texts made of code (`[`x`](x)`).
        targets += _LINK.findall(_CODE_SPAN.sub("code", line))
    return targets


def _anchor(heading: str) -> str:
    """GitHub's id of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in _prose_lines(path.read_text()):
        if match := re.match(r"#{1,6}\s+(.*)", line):
            anchor = base = _anchor(match.group(1))
            number = 0
            while anchor in found:  # GitHub numbers repeated headings: x, x-1, x-2 ...
                number += 1
                anchor = f"{base}-{number}"
            found.add(anchor)
    return found


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def test_readme_is_short() -> None:
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES}: move detail to docs/"


def test_model_card_has_the_standard_sections() -> None:
    text = CARD.read_text()
    assert text.count("\n") <= CARD_MAX_LINES
    headings = [line for line in _prose_lines(text) if line.startswith("## ")]
    missing = [s for s in CARD_SECTIONS if not any(h.startswith(s) for h in headings)]
    assert not missing, f"weights/fernet.md lacks {missing}"
    # Sections the code cites by name (alignment.py, keras_layers.py, model_choices.py).
    assert {"## Alignment", "## int8", "## Per-face contrast"} <= set(headings)
    assert "Art. 5(1)(f)" in _section(text, "## Ethical considerations")
    assert "FER+ majority" in _section(text, "## Evaluation") and "<!--" not in text


def test_every_relative_link_leads_to_a_file_and_heading() -> None:
    broken = []
    for page in _pages():
        for target in _links(page.read_text()):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path_part, _, anchor = target.partition("#")
            destination = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.relative_to(REPO)}: {target}"
            if not destination.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and destination.suffix == ".md" and anchor not in _anchors(destination):
                broken.append(f"{where} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_link_check_sees_links_and_anchors() -> None:
    """The checks above would pass on pages they cannot read: show them what they must find."""
    assert _links("[a](x.md) ![b](img/c.png) [`d`](e.py#f) `[g](h)` <https://i>") == ["x.md", "img/c.png", "e.py#f"]
    assert _links("```\n[a](in-code.md)\n```\n[b](out.md)") == ["out.md"]
    assert _anchor("Many videos: `python -m fer_async.analyze --ray`") == "many-videos-python--m-fer_asyncanalyze---ray"
    assert "docs/img/webcam.png" in _links(README.read_text())


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    quick_start = _code_lines(_section(README.read_text(), "## Quick start"))
    assert "pytest" in commands[-1]
    assert commands[-1] in quick_start, f"the README's quick start lacks .ci/run's last command: {commands[-1]}"


def test_readme_says_what_it_reads_near_the_top() -> None:
    top = "\n".join(README.read_text().splitlines()[:30])
    assert "not the emotion a person feels" in top and "Art. 5(1)(f)" in top
    assert "docs/img/webcam.png" in top


def test_module_map_names_every_module() -> None:
    architecture = (DOCS / "architecture.md").read_text()
    package = REPO / "fer_async"
    missing = [
        path.relative_to(package).as_posix()
        for path in sorted(package.rglob("*.py"))
        if f"`{path.relative_to(package).as_posix()}`" not in architecture
    ]
    assert not missing, f"docs/architecture.md's module map lacks {missing}"
