"""How a setting is declared as a command-line option, once: a dataclass field made by `option(...)`.

The field's metadata holds an `Option`: its flag, help, how its text (from the command line or
the environment) is read, and its choices and range. `fer_async.config` declares the server's
settings this way and builds its parser, its checks and the README's table from them.
Standard library only.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fer_async.paths import shown_path

ENV_PREFIX = "FER_"

T = TypeVar("T")


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_int(text: str) -> int:
    # Base 10: a leading zero (FER_DETECT_EVERY=05, --port 08305) is still decimal (base 0 refuses it).
    return int(text.replace("_", ""), 10)  # accepts 2_000_000


@dataclass(frozen=True)
class Range:
    """The numbers an option accepts: from `low` to `high`, either end open or absent."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    alternative: str = ""  # another accepted spelling, named in the message ("'auto'")

    def __contains__(self, value: float) -> bool:  # NaN fails every comparison: never inside
        above = value > self.low if self.low_open else value >= self.low
        if self.high is None:
            return above
        return above and (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            text = f"> {self.low}" if self.low_open else f">= {self.low}"
        elif self.low_open or self.high_open:
            text = f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        else:
            text = f"{self.low}..{self.high}"
        return f"{text} or {self.alternative}" if self.alternative else text


@dataclass(frozen=True)
class Option:
    """How one setting is given: its flag, how its text is read, its help and what it accepts."""

    flag: str
    help: str
    parse: Callable[[str], Any]  # the text of the flag's value or of the environment variable
    default: Any
    metavar: str | None = None  # None for a switch or a choice
    choices: tuple[str, ...] | None = None
    range: Range | None = None
    repeatable: bool = False  # given several times; its environment variable separates them by commas
    # A word accepted beside the range and the value it is kept as (("auto", 0)), shown as the word.
    alias: tuple[str, Any] | None = None

    @property
    def env(self) -> str:
        """FER_ + the flag, e.g. --max-batch -> FER_MAX_BATCH, --allow-origin -> FER_ALLOW_ORIGIN."""
        return ENV_PREFIX + self.flag.removeprefix("--").replace("-", "_").upper()

    @property
    def usage(self) -> str:
        """How the option is written, e.g. `--max-batch N`, `--detector haar|yunet`."""
        if self.choices is not None:
            return f"{self.flag} {'|'.join(self.choices)}"
        return f"{self.flag} {self.metavar}" if self.metavar else self.flag

    @property
    def shown_default(self) -> str:
        """The default as --help and the README show it: on/off, a, b, a path relative to a checkout, none."""
        default = self.default
        if self.alias is not None and default == self.alias[1]:
            return self.alias[0]
        if isinstance(default, bool):
            return "on" if default else "off"
        if isinstance(default, tuple):
            default = ",".join(default)
        if isinstance(default, Path):
            default = shown_path(default)
        return "none" if default in (None, "") else str(default)

    def problem(self, value: Any) -> str | None:
        """Why `value` is not accepted, or None."""
        if self.choices is not None and value not in self.choices:
            return f"{self.flag} must be one of {', '.join(self.choices)}, got {value!r}"
        if self.alias is not None and value == self.alias[1]:
            return None
        if self.range is not None and value not in self.range:
            return f"{self.flag} must be {self.range}, got {value}"
        return None

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup, dest: str) -> None:
        """Add the flag to `parser`. Left out, it parses to None ("not given": the caller falls back)."""
        kwargs: dict[str, Any] = {
            "dest": dest,
            "default": None,
            "help": f"{self.help} [env {self.env}; default: {self.shown_default}]",
        }
        if self.parse is parse_bool:
            kwargs["action"] = argparse.BooleanOptionalAction  # --flag / --no-flag
        else:
            kwargs.update(type=self.parse, metavar=self.metavar, choices=self.choices)
            if self.repeatable:
                kwargs["action"] = "append"
        parser.add_argument(self.flag, **kwargs)


def _parse_for(default: object) -> Callable[[str], Any]:
    for kind, parse in ((bool, parse_bool), (int, parse_int), (float, float), (Path, Path), (str, str)):
        if isinstance(default, kind):
            return parse
    raise TypeError(f"an option with the default {default!r} needs parse=")


def option(
    default: T,
    flag: str,
    help: str,
    metavar: str | None = None,
    *,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    range: Range | None = None,
    repeatable: bool = False,
    alias: tuple[str, Any] | None = None,
) -> T:
    """A dataclass field that is an option; `parse` follows the default's type (a bool: a switch)."""
    declared = Option(flag, help, parse or _parse_for(default), default, metavar, choices, range, repeatable, alias)
    return field(default=default, metadata={"option": declared})


def options_of(cls: type[Any]) -> dict[str, Option]:
    """Field name -> Option of a dataclass declared with `option(...)`, in declaration order."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(cls)}
