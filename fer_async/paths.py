"""Where the files the project ships are: static/, templates/ and weights/.

They sit at the top of a checkout. A wheel carries them inside the package (pyproject.toml maps
them there), so an installed server finds them wherever it runs. Standard library only.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
SHIPPED_ROOT = PACKAGE_DIR if (PACKAGE_DIR / "static").is_dir() else REPO_ROOT
STATIC_DIR = SHIPPED_ROOT / "static"
TEMPLATES_DIR = SHIPPED_ROOT / "templates"
WEIGHTS_DIR = SHIPPED_ROOT / "weights"


def shown_path(path: Path) -> str:
    """`path` as --help shows a default: relative to a checkout, in full when installed."""
    if SHIPPED_ROOT == REPO_ROOT and path.is_relative_to(REPO_ROOT):
        return str(path.relative_to(REPO_ROOT))
    return str(path)
