"""User-facing errors. Every error a user can cause carries a Location so it prints as file:line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Location:
    """A place in a spec file; line and column are 1-based (0 means 'whole file')."""

    file: Path
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return str(self.file)
        if self.column <= 0:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class SpecIssue:
    """One located problem in a spec: where, which field, what was wrong."""

    location: Location
    field: str
    message: str

    def __str__(self) -> str:
        field = f" {self.field}:" if self.field else ""
        return f"{self.location}:{field} {self.message}"


class SpecgradError(Exception):
    """Base for every error specgrad reports to a user instead of a traceback."""


class SpecError(SpecgradError):
    """A spec file is invalid; holds every issue found, not only the first."""

    def __init__(self, issues: list[SpecIssue] | tuple[SpecIssue, ...]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(i) for i in self.issues))

    @classmethod
    def at(cls, location: Location, field: str, message: str) -> SpecError:
        return cls([SpecIssue(location, field, message)])


class UsageError(SpecgradError):
    """The command line asks for something that cannot be done (exit code 2)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest of `choices`, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
