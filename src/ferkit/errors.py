"""Errors that speak to the user: the CLI prints their message and exits without a traceback."""

from __future__ import annotations

from dataclasses import dataclass


class FerkitError(Exception):
    """A user-facing problem: bad input, a missing file, a wrong option."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, located as an editor would show it (1-based)."""

    line: int | None
    column: int | None
    message: str

    def where(self) -> str:
        if self.line is None:
            return ""
        return f"line {self.line}" + (f", column {self.column}" if self.column else "")


class DataFormatError(FerkitError):
    """A data file that cannot be read as FER2013; lists the first problems and counts the rest."""

    shown = 5

    def __init__(self, path: str, problems: list[Problem], total: int | None = None):
        self.path = str(path)
        self.problems = problems
        self.total = total if total is not None else len(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        head = self.problems[: self.shown]
        lines = [f"{self.path}: cannot load this file as FER2013 ({self.total} problem{'s' if self.total != 1 else ''})"]
        for problem in head:
            where = problem.where()
            lines.append(f"  {where}: {problem.message}" if where else f"  {problem.message}")
        if self.total > len(head):
            lines.append(f"  ... and {self.total - len(head)} more")
        return "\n".join(lines)
